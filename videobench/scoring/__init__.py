"""The three steps of ``videobench score`` (collect, compute, write); :mod:`videobench.score` runs them."""
