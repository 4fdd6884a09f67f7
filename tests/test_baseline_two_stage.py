"""Stage 2 of the two-stage baselines (CogVideoX-5B-I2V): fitting the stage-1 image, the scheduler, per-stage dtypes.

The fitting is checked with known arithmetic and against diffusers' own ``VideoProcessor`` (what the I2V pipeline does
with an image it is given); the scheduler against THUDM's ``inference/cli_demo.py`` call; the dtypes against the rule
written in ``baselines/two_stage.py`` and ``docs/baselines/README.md``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from baselines.two_stage import CogVideoXI2V, image_on_canvas, stage1_context, stage_dtype
from videobench.methods import MethodContext, get_method
from videobench.options import OptionError

pytestmark = pytest.mark.usefixtures("one_thread")


def _square(size: int = 512) -> Image.Image:
    """A square whose rows and columns are told apart: red = column, green = row (both scaled to 0..255)."""
    ramp = np.linspace(0, 255, size).round().astype(np.uint8)
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    pixels[..., 0] = ramp[None, :]
    pixels[..., 1] = ramp[:, None]
    return Image.fromarray(pixels)


def test_cover_scales_a_square_to_720_and_crops_120_rows_top_and_bottom():
    image = _square()
    out = image_on_canvas(image, 480, 720, "cover")
    reference = image.resize((720, 720), Image.Resampling.BICUBIC).crop((0, 120, 720, 600))
    assert out.size == (720, 480)
    assert np.array_equal(np.asarray(out), np.asarray(reference))
    green = np.asarray(out)[:, 360, 1].astype(int)
    assert green[0] == pytest.approx(255 * 120 / 720, abs=2) and green[-1] == pytest.approx(255 * 600 / 720, abs=2)


def test_pad_fits_a_square_in_480x480_with_120_white_columns_each_side():
    out = np.asarray(image_on_canvas(_square(), 480, 720, "pad"))
    assert out.shape == (480, 720, 3)
    assert (out[:, :120] == 255).all() and (out[:, 600:] == 255).all()
    inner = np.asarray(_square().resize((480, 480), Image.Resampling.BICUBIC))
    assert np.array_equal(out[:, 120:600], inner)


def test_squash_is_what_diffusers_i2v_pipeline_does_with_the_image():
    """The whole image, resized to 720x480 (aspect not kept), equal to the pipeline's own preprocessing."""
    from diffusers.video_processor import VideoProcessor

    image = _square()
    out = image_on_canvas(image, 480, 720, "squash")
    assert out.size == (720, 480)
    green, red = np.asarray(out)[:, :, 1].astype(int), np.asarray(out)[:, :, 0].astype(int)
    assert green[0, 360] <= 1 and green[-1, 360] >= 254 and red[240, 0] <= 1 and red[240, -1] >= 254  # nothing cut
    processor = VideoProcessor(vae_scale_factor=8)  # CogVideoXImageToVideoPipeline's (resample "lanczos")
    direct = processor.preprocess(image, height=480, width=720)
    ours = processor.preprocess(out, height=480, width=720)
    assert torch.equal(ours, direct)
    assert np.array_equal(np.asarray(image_on_canvas(out, 480, 720, "squash")), np.asarray(out))


def test_unknown_fit_mode_is_refused():
    with pytest.raises(ValueError, match="fit mode 'stretch': squash, cover or pad"):
        image_on_canvas(_square(8), 4, 6, "stretch")
    with pytest.raises(OptionError, match="fit"):
        get_method("ip-adapter+i2v").parse_options({"fit": "contain"})


@pytest.mark.parametrize(("choice", "run", "device", "expected"), [
    ("auto", "auto", "cuda", "fp16"),       # the stage's upstream precision on CUDA
    ("auto", "auto", "cuda:1", "fp16"),
    ("auto", "auto", "cpu", "fp32"),        # fp32 elsewhere
    ("auto", "bf16", "cuda", "bf16"),       # --dtype replaces auto
    ("fp32", "bf16", "cuda", "fp32"),       # the per-stage option wins over --dtype
    ("bf16", "auto", "cpu", "bf16"),
])
def test_stage_dtype_rule(choice, run, device, expected):
    assert stage_dtype(choice, run, device, "fp16") == expected


def test_each_stage_has_its_own_dtype():
    spec = get_method("blip-diffusion+i2v")
    options = spec.parse_options({})
    context = MethodContext(device="cuda", preset="tiny")
    assert stage1_context(options, context, "fp32").dtype == "fp32" and context.dtype == "auto"
    assert CogVideoXI2V(options, context).dtype == torch.bfloat16
    options = spec.parse_options({"stage1_dtype": "fp16", "i2v_dtype": "fp32"})
    assert stage1_context(options, context, "fp32").dtype == "fp16"
    assert CogVideoXI2V(options, context).dtype == torch.float32
    generator = spec.factory(spec.parse_options({}), MethodContext(device="cuda", dtype="fp16", preset="tiny"))
    config = generator.config()
    assert config["stage1_dtype"] == "fp16" and config["stage2"]["dtype"] == "float16"


def _recorded_call(options: dict) -> tuple[object, dict]:
    spec = get_method("reference+i2v")
    generator = spec.factory(spec.parse_options({"i2v_steps": "2", **options}), MethodContext(preset="tiny"))
    pipe = generator.stage2.pipeline
    seen: dict = {}
    original = type(pipe).__call__

    def record(self, **kwargs):
        seen.update(kwargs, scheduler=self.scheduler)
        return original(self, **kwargs)

    type(pipe).__call__ = record
    try:
        generator.stage2.animate(_square(64), "a dog runs", seed=0)
    finally:
        type(pipe).__call__ = original
    return generator, seen


def test_default_stage2_call_is_thudms_cli_demo():
    """``CogVideoXDPMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")`` and
    ``use_dynamic_cfg=True``; run.json records the scheduler's class and config as loaded."""
    from diffusers import CogVideoXDPMScheduler

    generator, seen = _recorded_call({})
    scheduler = seen["scheduler"]
    assert type(scheduler) is CogVideoXDPMScheduler and scheduler.config.timestep_spacing == "trailing"
    assert seen["use_dynamic_cfg"] is True and seen["guidance_scale"] == 6.0
    assert seen["image"].size == (192, 128)
    recorded = generator.config()["stage2"]["scheduler"]
    assert recorded["class"] == "CogVideoXDPMScheduler"
    assert {key: scheduler.config[key] for key in recorded["config"]} == recorded["config"]


def test_ddim_and_static_cfg_stay_reachable():
    from diffusers import CogVideoXDDIMScheduler

    generator, seen = _recorded_call({"i2v_scheduler": "ddim", "i2v_dynamic_cfg": "false"})
    assert type(seen["scheduler"]) is CogVideoXDDIMScheduler and seen["use_dynamic_cfg"] is False
    assert generator.config()["stage2"]["scheduler"]["class"] == "CogVideoXDDIMScheduler"
