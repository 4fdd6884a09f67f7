"""Comparison methods of the paper's Table 1 (and beyond), each a self-registering module.

Importing this package registers every baseline with :mod:`videobench.methods`; models load only when a run
builds a generator.
"""

from baselines import reference_i2v, wan_vace  # registers reference+i2v and wan-vace
