"""The weight-free calibration methods reference-still and reference-pan."""

from __future__ import annotations

import numpy as np
from PIL import Image

from mediaio.images import fit_to_canvas
from videobench.calibration import pan_zoom_frames
from videobench.cases import Case
from videobench.methods import MethodContext, build_generator


def _case(tmp_path, size=(100, 50), mode="RGB") -> Case:
    path = tmp_path / "ref.png"
    image = Image.new(mode, size, (200, 30, 30) if mode == "RGB" else (200, 30, 30, 255))
    image.save(path)
    return Case("c0", "toy", "s", "a red block spinning", "block", (str(path),))


def test_fit_keeps_aspect_and_pads_white():
    image = Image.new("RGB", (100, 50), (10, 20, 30))  # 2:1 landscape into a 48x72 (3:2) canvas
    canvas = np.asarray(fit_to_canvas(image, 48, 72))
    assert canvas.shape == (48, 72, 3)
    # 72 wide -> 36 high, centred: rows 6..41 hold the image, the rest is white.
    assert (canvas[:6] == 255).all() and (canvas[42:] == 255).all()
    assert (np.abs(canvas[10:38].astype(int) - (10, 20, 30)) <= 1).all()


def test_reference_still_holds_the_fitted_reference(tmp_path):
    case = _case(tmp_path)
    generator = build_generator("reference-still", {}, MethodContext(num_frames=5, height=48, width=72))[0]
    frames = generator.generate(case, seed=0)
    assert frames.shape == (5, 48, 72, 3) and frames.dtype == np.uint8
    assert all(np.array_equal(frames[0], frame) for frame in frames)
    expected = np.asarray(fit_to_canvas(Image.open(case.references[0]), 48, 72))
    assert np.array_equal(frames[0], expected)
    assert generator.run_name == "reference-still" and generator.random_weights is False


def test_reference_pan_moves_from_the_still_frame(tmp_path):
    case = _case(tmp_path, mode="RGBA")
    still = build_generator("reference-still", {}, MethodContext(num_frames=9, height=48, width=72))[0].generate(case, 0)
    pan = build_generator("reference-pan", {}, MethodContext(num_frames=9, height=48, width=72))[0].generate(case, 0)
    assert pan.shape == still.shape
    assert np.abs(pan[0].astype(int) - still[0].astype(int)).max() <= 2  # zoom 1, no offset at the start
    differences = [np.abs(pan[i + 1].astype(int) - pan[i].astype(int)).mean() for i in range(8)]
    assert all(d > 0 for d in differences), "every frame should move"


def test_pan_zoom_last_frame_is_the_zoomed_right_edge():
    canvas = Image.fromarray(np.tile(np.arange(80, dtype=np.uint8)[None, :, None], (40, 1, 3)))  # x-gradient
    frames = pan_zoom_frames(canvas, 3, max_zoom=2.0)
    # Last frame shows the right half (x in [40, 80)) stretched to the full width.
    assert abs(int(frames[-1][20, 0, 0]) - 40) <= 1 and abs(int(frames[-1][20, -1, 0]) - 79) <= 1
