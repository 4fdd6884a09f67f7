"""BLIP-Diffusion's published constants (LAVIS and Salesforce/blipdiffusion), torch-free: describing the method imports
only this module, building it :mod:`baselines.blip_diffusion_model`."""

from __future__ import annotations

#: LAVIS's and the diffusers example's negative prompt (projects/blip-diffusion/README.md, notebooks).
NEGATIVE_PROMPT = (
    "over-exposure, under-exposure, saturated, duplicate, out of frame, lowres, cropped, worst quality, "
    "low quality, jpeg artifacts, morbid, mutilated, out of frame, ugly, bad anatomy, bad proportions, deformed, "
    "blurry, duplicate"
)


#: OpenAI CLIP's pixel statistics (``model_index.json`` ``mean``/``std`` of Salesforce/blipdiffusion).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)


CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
