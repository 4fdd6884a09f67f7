"""Comparison methods of the paper's Table 1 (and beyond), each a self-registering module.

Importing this package registers every baseline with :mod:`videobench.methods`; models load only when a run
builds a generator.
"""

from baselines import reference_i2v  # noqa: F401  (registers reference+i2v)
from baselines import videobooth  # noqa: F401  (registers videobooth)
