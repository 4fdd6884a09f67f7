"""Comparison methods of the paper's Table 1 (and beyond), each a self-registering module.

Importing this package registers every baseline with :mod:`videobench.methods`; models load only when a run
builds a generator.
"""

from baselines import (
    blip_diffusion,  # registers blip-diffusion+i2v
    reference_i2v,  # registers reference+i2v
)
