"""Comparison methods of the paper's Table 1 (and beyond), each a self-registering module.

Importing this package registers every baseline with :mod:`videobench.methods`; models load only when a run
builds a generator.
"""

from baselines import (  # importing a module registers its method
    adapter,
    i2v,
    ip,
    ip_adapter,
    ms_diffusion,
    reference,
    reference_i2v,
    registers,
)

__all__ = ["adapter", "i2v", "ip", "ip_adapter", "ms_diffusion", "reference", "reference_i2v", "registers"]
