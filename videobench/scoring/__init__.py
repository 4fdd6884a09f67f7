"""The three steps of ``videobench score`` (collect, compute, write); :mod:`videobench.scoring.runner` runs them."""
