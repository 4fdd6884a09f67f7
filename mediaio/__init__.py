"""Small IO helpers shared by ``videobench``, ``customvideox`` and ``baselines``: atomic writes, hashing, images and
video.

Neither package's model code depends on the other; both depend on this one.
"""
