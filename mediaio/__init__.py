"""Small helpers shared by ``videobench``, ``customvideox`` and ``baselines``: atomic writes, hashing, images,
video, and the model-agnostic FakeTensor cost machinery (:mod:`mediaio.fakecost`).

Neither package's model code depends on the other; both depend on this one.
"""
