"""Small file helpers shared by ``videobench`` and ``customvideox``: atomic writes, hashing, images, video.

Neither package's model code depends on the other; both depend on this one.
"""
