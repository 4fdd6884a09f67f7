"""Comparison methods of the paper's Table 1 (and beyond), each a self-registering module.

Importing this package registers every baseline with :mod:`videobench.methods`; models load only when a run
builds a generator.
"""

from baselines import (  # importing a module registers its method
    a,
    adapter,
    blip,
    blip_diffusion,
    diffusion,
    i2v,
    importing,
    ip,
    ip_adapter,
    its,
    lambda_eclipse,
    method,
    module,
    ms_diffusion,
    reference,
    reference_i2v,
    registers,
    ssr_encoder,
)

__all__ = ["a", "adapter", "blip", "blip_diffusion", "diffusion", "i2v", "importing", "ip", "ip_adapter", "its", "lambda_eclipse", "method", "module", "ms_diffusion", "reference", "reference_i2v", "registers", "ssr_encoder"]
