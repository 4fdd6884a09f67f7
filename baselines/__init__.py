"""Comparison methods of the paper's Table 1 (and beyond), each a self-registering module.

Importing this package registers every baseline with :mod:`videobench.methods`; models load only when a run
builds a generator.
"""

from baselines import (  # importing a module registers its method
    blip_diffusion,
    ip_adapter,
    lambda_eclipse,
    ms_diffusion,
    reference_i2v,
    ssr_encoder,
    videobooth,
    wan_vace,
)

__all__ = [
    "blip_diffusion", "ip_adapter", "lambda_eclipse", "ms_diffusion", "reference_i2v", "ssr_encoder", "videobooth",
    "wan_vace",
]
