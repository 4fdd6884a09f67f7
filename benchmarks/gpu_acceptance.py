"""One GPU acceptance command: everything this project has waiting for a GPU, in one process, inside 8 minutes.

GPU time is usually lent in short windows; this runs, in order, each as a named *section* that returns rows:

1. ``cuda_tests``: ``python -m pytest tests/test_cuda.py`` as a subprocess with a time cap (passed / failed /
   skipped counts, failing test names; the fp16/bf16 metric-drift test is its own row);
2. ``step_latency``: one CFG step (batch 2, bf16) at the real CogVideoX-5B shape (49 frames at 480x720) of
   vanilla and of CustomVideoX joint / cached with TAB+ERAE off and on, peak memory per variant, the cache build
   (``benchmarks/step_latency.py``'s functions; the 5B transformer is built once and shared by every section);
3. ``end_to_end``: one VAE encode of the reference + cache build and ONE VAE decode at the real size, measured;
   the 50-step video is extrapolated from them and the measured cached-mode step;
4. ``scoring``: all five metrics on a 49x480x720 video, the batched scorer against the per-pair naive loop
   (``benchmarks/score_throughput.py``);
5. ``train_step``: one optimizer step at 25x480x720 (LoRA rank 128, gradient checkpointing, bf16; the shared
   model's LoRA is trained in place and restored) with its time and peak memory (``benchmarks/train_step.py``);
6. ``baselines``: every comparison baseline's stages at real size with random weights, each
   method's cost model run for real (``baseline_timing.py``): stage 2 (CogVideoX-5B-I2V) once, the five stage-1
   image models, VideoBooth and Wan2.1-VACE 1.3B, a few denoiser steps each extrapolated to the default count and
   one of every other call (VAE decodes included), while the section's budget lasts;
7. ``compiled``: vanilla and the full method after ``torch.compile``, variant by variant while the budget lasts,
   and the 50-step video extrapolated from the compiled step.

Every weight is random (seeded): timings only. Each row states ``pass`` / ``fail`` / ``unmeasured`` against its
target (:data:`TARGETS`; ``info`` when it has none), and the targets are printed next to the numbers.

**Budgets.** ``--budget-s`` (default 470 s, counted from the start of the process, imports included) bounds the
whole run; each section also has its own budget (``--section-budget NAME=SECONDS``) and a minimum: a section that
cannot get its minimum from what is left is skipped with the reason recorded, and one that overruns its budget is
cut off (SIGALRM) keeping the rows it had. **Interruptions.** The JSON and Markdown reports are rewritten
atomically after every row and every section, so a SIGTERM / SIGINT / ``timeout`` (or a SIGKILL) leaves the
sections done so far on disk; on SIGTERM/SIGINT the report says so (``"interrupted"``) and the exit code is
128 + the signal number.

**Adding a section** (as ``baselines`` is added, through :func:`register_section`): write
``def my_rows(ctx: Context) -> Iterator[Row]`` (``ctx`` has the device, dtype, step counts, the shared 5B
transformer via ``ctx.transformer()``, the earlier sections' numbers in ``ctx.results`` and the time left), and
register it with ``register_section(Section("baselines", "title", my_rows, budget_s=..., min_s=...,
targets=(...)))``, either here or in a module named on the command line with ``--extra-sections MODULE`` (it is
imported before the run, so its ``register_section`` calls count; it does ``from gpu_acceptance import Row,
Section, register_section``, which gets this running module). New targets go into :data:`TARGETS`.

Usage::

    python benchmarks/gpu_acceptance.py --device cuda                  # reports/gpu_acceptance.{json,md}
    python benchmarks/gpu_acceptance.py --tiny --device cpu            # tiny presets: a structure check, ~1 min
    python benchmarks/gpu_acceptance.py --device cuda --sections step_latency,end_to_end --out-dir /tmp/acc
"""

from __future__ import annotations

import time

_STARTED = time.monotonic()  # the global budget counts the imports too

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import importlib  # noqa: E402
import math  # noqa: E402
import operator  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable, Iterable, Iterator  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import baseline_timing  # noqa: E402
import diffusers  # noqa: E402
import estimate  # noqa: E402
import score_throughput  # noqa: E402
import step_latency  # noqa: E402
import train_step  # noqa: E402
from diffusers import AutoencoderKLCogVideoX  # noqa: E402

from customvideox.config import ReferenceConfig  # noqa: E402
from mediaio.atomic import atomic_write_json, atomic_write_text  # noqa: E402

PASS, FAIL, UNMEASURED, INFO = "pass", "fail", "unmeasured", "info"
#: The default budget: the whole run ends inside 8 minutes with 10 s to spare.
DEFAULT_BUDGET_S = 470.0
#: Shapes of the real run: the scored video (frames, height, width) and the training clip (25 frames at 480x720).
SCORING_VIDEO = (49, 480, 720)
TRAINING_CLIP = (25, 480, 720)
#: The ``--tiny`` scored video (RAFT pads it to 128x128) and its RAFT updates (20 in the real run).
TINY_SCORING_VIDEO = (2, 64, 96)
TINY_FLOW_UPDATES = 2
#: Micro-steps per optimizer step (the paper's gradient accumulation).
ACCUMULATION = 2
#: The test of tests/test_cuda.py that checks the fp16/bf16 metric drift.
DRIFT_TEST = "test_half_precision_metrics_stay_within_0_1_points"
#: Scoring targets: seconds per video for all five metrics, and the speed-up over the per-pair naive loop.
SCORING_MAX_SECONDS = 0.5
SCORING_MIN_SPEEDUP = 5.0


# --- targets and rows ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """A target threshold: a row passes when its ``checked`` value ``op`` ``limit`` holds."""

    text: str
    limit: float | None = None
    op: str = "<="
    unit: str = ""

    def judge(self, value: float | None) -> str:
        """``pass`` / ``fail``, or ``unmeasured`` without a value (or without a numeric limit)."""
        if value is None or self.limit is None:
            return UNMEASURED
        compare = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}[self.op]
        return PASS if compare(value, self.limit) else FAIL

    def show(self, value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}{self.unit}"


#: Every target a row can be held against, in report order (add new ones here).
TARGETS: dict[str, Target] = {
    "cuda_tests": Target("tests/test_cuda.py passes"),
    "metric_drift": Target("fp16/bf16 metric drift <= 0.1 points (tests/test_cuda.py)"),
    "joint_step": Target(f"joint step <= {step_latency.JOINT_MAX_RATIO}x vanilla", step_latency.JOINT_MAX_RATIO,
                         unit="x"),
    "cached_step": Target(f"cached step <= {step_latency.CACHED_MAX_RATIO}x vanilla", step_latency.CACHED_MAX_RATIO,
                          unit="x"),
    "tab_erae": Target(f"TAB+ERAE <= +{round(100 * (step_latency.TAB_ERAE_MAX_RATIO - 1))}% over the same mode "
                       "without them", step_latency.TAB_ERAE_MAX_RATIO, unit="x"),
    "video_50": Target(f"50-step video < {step_latency.VIDEO_MAX_SECONDS:g} s end to end",
                       step_latency.VIDEO_MAX_SECONDS, "<", " s"),
    "scoring_seconds": Target(f"scoring < {SCORING_MAX_SECONDS} s/video (5 metrics)", SCORING_MAX_SECONDS, "<", " s"),
    "scoring_speedup": Target(f"scoring >= {SCORING_MIN_SPEEDUP:g}x the naive per-pair loop", SCORING_MIN_SPEEDUP,
                              ">=", "x"),
    "train_memory": Target("training step fits one 80 GB GPU", estimate.GPU_GIB, "<", " GiB"),
}


@dataclass
class Row:
    """One measurement: ``value`` in ``unit``; with a ``target``, the ``checked`` value held against it and a status
    (computed from the target unless given); ``data`` keeps the raw numbers for the JSON."""

    name: str
    value: float | str | None
    unit: str = ""
    target: str | None = None
    checked: float | None = None
    status: str | None = None
    note: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.target is not None and self.target not in TARGETS:
            raise ValueError(f"unknown target {self.target!r}; known: {sorted(TARGETS)}")
        if self.status is None:
            self.status = TARGETS[self.target].judge(self.checked) if self.target else INFO

    def shown_value(self) -> str:
        if self.value is None:
            return "-"
        value = f"{self.value:.3f}" if isinstance(self.value, float) else str(self.value)
        return f"{value} {self.unit}".strip()


# --- sections, their context and the registry ----------------------------------------------------------------------
@dataclass
class Context:
    """What a section gets: the settings, the shared 5B transformer, earlier sections' numbers, the clock."""

    device: torch.device
    dtype: torch.dtype
    tiny: bool = False
    steps: int = 3
    warmup: int = 1
    video_steps: int = 50
    compile_backend: str = "inductor"
    compile_mode: str | None = None
    deadline: float = math.inf
    section_deadline: float = math.inf
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    _transformer: tuple | None = None

    def time_left(self) -> float:
        """Seconds left in the running section (its budget or the global one, whichever ends first)."""
        return min(self.deadline, self.section_deadline) - time.monotonic()

    def transformer(self) -> tuple[Any, dict, dict, dict]:
        """``(model, vae_config, lora_settings, step_inputs)`` of :func:`step_latency.build`, built on first use."""
        if self._transformer is None:
            self._transformer = step_latency.build(self.device, self.dtype, tiny=self.tiny)
        return self._transformer


@dataclass(frozen=True)
class Section:
    """A named part of the run: ``run(ctx)`` yields :class:`Row` s; it gets at most ``budget_s`` seconds and is
    skipped unless ``min_s`` are left; ``targets`` are the :data:`TARGETS` it measures (unmeasured if it can't)."""

    name: str
    title: str
    run: Callable[[Context], Iterable[Row]]
    budget_s: float = math.inf
    min_s: float = 0.0
    targets: tuple[str, ...] = ()


def _peak_note(timing: dict[str, Any]) -> str:
    peak = timing.get("peak_gib")
    return f"peak {peak:.1f} GiB" if peak is not None else "peak - (CPU)"


# --- 1. tests/test_cuda.py ----------------------------------------------------------------------------------------
_PYTEST_LINE = re.compile(r"^(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b", re.MULTILINE)


def run_pytest(test_path: str, timeout: float) -> tuple[dict[str, str], int | None, str]:
    """Run ``pytest -v test_path`` in a subprocess (this checkout first on ``PYTHONPATH``); returns the outcome of
    every reported test id (``PASSED``, ``FAILED``, ...), the exit code (``None``: killed at ``timeout``) and the
    output (what came before the kill, on a timeout)."""
    command = [sys.executable, "-m", "pytest", test_path, "-v", "-p", "no:cacheprovider", "--color=no"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1",  # a killed run still shows the tests it finished
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    try:
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=max(timeout, 1.0))
        output, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as expired:  # its output is bytes even in text mode
        parts = (expired.stdout, expired.stderr)
        output = "".join(p.decode(errors="replace") if isinstance(p, bytes) else (p or "") for p in parts)
        code = None
    return {match[1]: match[2] for match in _PYTEST_LINE.finditer(output)}, code, output


def tests_status(outcomes: list[str], complete: bool) -> str:
    """``fail`` if a test failed or errored; ``pass`` if the run completed and something passed; else unmeasured
    (all skipped, e.g. no CUDA, or cut off before the end)."""
    if any(outcome in ("FAILED", "ERROR") for outcome in outcomes):
        return FAIL
    return PASS if complete and "PASSED" in outcomes else UNMEASURED


def cuda_tests_section(ctx: Context, test_path: str = "tests/test_cuda.py") -> Iterator[Row]:
    """tests/test_cuda.py in a subprocess capped a few seconds before the section's budget ends."""
    outcomes, code, output = run_pytest(test_path, ctx.time_left() - 3.0)
    counts = {kind.lower(): list(outcomes.values()).count(kind) for kind in ("PASSED", "FAILED", "ERROR", "SKIPPED")}
    failing = sorted(test for test, outcome in outcomes.items() if outcome in ("FAILED", "ERROR"))
    complete = code in (0, 1)  # 0: all passed (or skipped), 1: some failed; else interrupted, internal error, ...
    status = tests_status(list(outcomes.values()), complete)
    if code not in (0, 1, 5, None):  # 5: nothing collected
        status = FAIL
    note = "killed at the time cap" if code is None else f"exit code {code}"
    note += "; all skipped" if outcomes and counts["skipped"] == len(outcomes) else ""
    note += f"; failing: {', '.join(failing)}" if failing else ""
    if code not in (0, 1, None) and not outcomes:
        note += "; " + " / ".join(output.strip().splitlines()[-3:])
    yield Row(test_path, f"{counts['passed']} passed, {counts['failed'] + counts['error']} failed, "
              f"{counts['skipped']} skipped", target="cuda_tests", status=status, note=note,
              data={"counts": counts, "failing": failing, "exit_code": code, "outcomes": outcomes})
    drift = {test: outcome for test, outcome in outcomes.items() if DRIFT_TEST in test}
    by_dtype = ", ".join(f"{test.split('[')[-1].rstrip(']')}: {outcome}" for test, outcome in drift.items())
    yield Row(f"{DRIFT_TEST} (fp16, bf16)", by_dtype or None, target="metric_drift",
              status=tests_status(list(drift.values()), complete and bool(drift)), data={"outcomes": drift})


# --- 2. per-step latency ------------------------------------------------------------------------------------------
#: The target of each CustomVideoX mode's step time (the first word of a variant's name).
MODE_TARGETS = {"joint": "joint_step", "cached": "cached_step"}


def step_row(timing: dict[str, Any], base: dict[str, Any] | None, base_name: str = "vanilla") -> Row:
    """A per-step row: median seconds, peak memory, and the ratio to ``base`` held against its mode's target."""
    name = timing["variant"]
    ratio = timing["median_s"] / base["median_s"] if base else None
    target = MODE_TARGETS.get(name.split(",")[0])
    note = f"{ratio:.3f}x {base_name}, " if ratio is not None else f"no {base_name} row, "
    if "first_call_s" in timing:
        note += f"first (compiling) call {timing['first_call_s']:.1f} s, "
    return Row(name, timing["median_s"], "s/step", target=target, checked=ratio if target else None,
               note=note + _peak_note(timing), data=timing)


def tab_erae_row(mode: str, timings: dict[str, dict[str, Any]]) -> Row:
    """TAB+ERAE's cost: ``mode``'s step time with them over without them."""
    on, off = timings.get(f"{mode}, TAB+ERAE on"), timings.get(f"{mode}, TAB+ERAE off")
    ratio = on["median_s"] / off["median_s"] if on and off else None
    return Row(f"TAB+ERAE overhead, {mode}", ratio, "x", target="tab_erae", checked=ratio,
               note=f"{mode}, TAB+ERAE on / off")


def step_latency_section(ctx: Context) -> Iterator[Row]:
    """Vanilla and the four CustomVideoX variants, ``ctx.steps`` timed CFG steps each, and the cache build."""
    model, _, lora_cfg, inputs = ctx.transformer()
    timings = ctx.results.setdefault("step_latency", {})
    with torch.no_grad():
        for timing in step_latency.variant_rows(model, inputs, lora_cfg, ctx.warmup, ctx.steps):
            timings[timing["variant"]] = timing
            yield step_row(timing, timings.get("vanilla"))
        for mode in MODE_TARGETS:
            yield tab_erae_row(mode, timings)
        config = step_latency.variant_config(step_latency.FULL_CACHED, lora_cfg)
        cache = step_latency.time_reference_cache(model, inputs, config)
    yield Row("reference cache build (once per video)", cache["median_s"], "s", note=_peak_note(cache), data=cache)


# --- 3. end to end ------------------------------------------------------------------------------------------------
def video_row(name: str, ctx: Context, step_s: float | None, pieces: dict[str, float] | None, source: str) -> Row:
    """The ``ctx.video_steps``-step video extrapolated: reference + steps x ``step_s`` + decode (``pieces``)."""
    target = "video_50" if ctx.video_steps == 50 else None
    if step_s is None or pieces is None:
        return Row(name, None, "s", target=target, status=UNMEASURED if target else INFO,
                   note=f"needs {source} and the end_to_end section's measured encode/decode")
    total = pieces["reference_s"] + ctx.video_steps * step_s + pieces["decode_s"]
    note = (f"extrapolated: {pieces['reference_s']:.2f} s reference + {ctx.video_steps} x {step_s:.3f} s "
            f"({source}) + {pieces['decode_s']:.2f} s decode; T5 prompt encoding not included")
    return Row(name, total, "s", target=target, checked=total, note=note,
               data={"step_s": step_s, **pieces, "steps": ctx.video_steps})


def end_to_end_section(ctx: Context) -> Iterator[Row]:
    """ONE reference encode + cache build and ONE VAE decode at the run's size, then the extrapolated video."""
    model, vae_cfg, lora_cfg, inputs = ctx.transformer()
    step_latency.ensure_reference_lora(model, lora_cfg)
    config = step_latency.variant_config(step_latency.FULL_CACHED, lora_cfg)
    vae = step_latency.construct(AutoencoderKLCogVideoX, vae_cfg, ctx.device, ctx.dtype)
    generator = torch.Generator(ctx.device).manual_seed(2)
    _, frames, channels, height, width = inputs["latents"].shape
    latents = torch.randn(1, frames, channels, height, width, generator=generator, device=ctx.device, dtype=ctx.dtype)

    def reference() -> Any:
        latent = step_latency.encode_reference(vae, inputs["pixels"], generator, ctx.device, ctx.dtype)
        return model.build_reference_cache(latent, reference_config=config)

    tiling = not ctx.tiny  # the tiny VAE is smaller than one tile
    with torch.no_grad():
        encode = step_latency.time_call(reference, 0, 1, ctx.device)
        yield Row("reference: VAE encode + cache build (once)", encode["median_s"], "s", note=_peak_note(encode),
                  data=encode)
        decode = step_latency.time_call(lambda: step_latency.decode_latents(vae, latents, tiling), 0, 1, ctx.device)
    size = f"{(frames - 1) * 4 + 1}x{height * 8}x{width * 8}"
    yield Row(f"VAE decode, {size}{', tiled' if tiling else ''} (one measured)", decode["median_s"], "s",
              note=_peak_note(decode), data=decode)
    pieces = ctx.results["end_to_end"] = {"reference_s": encode["median_s"], "decode_s": decode["median_s"]}
    step = ctx.results.get("step_latency", {}).get(step_latency.FULL_CACHED)
    yield video_row(f"{ctx.video_steps}-step video, {size}", ctx, step and step["median_s"], pieces,
                    f"'{step_latency.FULL_CACHED}' step")


# --- 4. scoring throughput ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def cudnn_benchmark() -> Iterator[None]:
    """cuDNN autotuning on for the block (the scorer runs with it), as it was afterwards."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def scoring_section(ctx: Context) -> Iterator[Row]:
    """All five metrics (random weights, fp32): the scorer against the peers' per-frame/per-pair loop (VBench's
    ``DynamicDegree``, per-frame CLIP/DINO: :mod:`score_throughput`), the ratio reported beside the 5x target."""
    frames, height, width = TINY_SCORING_VIDEO if ctx.tiny else SCORING_VIDEO
    device = str(ctx.device)
    with cudnn_benchmark():
        if ctx.tiny:
            metrics = score_throughput.random_metrics(device, pair_batch=2, num_flow_updates=TINY_FLOW_UPDATES)
        else:
            metrics = score_throughput.random_metrics(device)
        sample = score_throughput.build_sample(frames, height, width, references=1 if ctx.tiny else 3)
        if ctx.device.type == "cuda":
            score_throughput.warm_up(metrics, sample, naive=True)
        paths = score_throughput.time_paths(metrics, sample, device)
    batched, naive = sum(paths["batched"].values()), sum(paths["naive"].values())
    size = f"{frames}x{height}x{width}"

    def per_family(path: str) -> str:
        return ", ".join(f"{family} {seconds:.3f} s" for family, seconds in paths[path].items())

    yield Row(f"batched scorer, {size}", batched, "s/video", target="scoring_seconds", checked=batched,
              note=per_family("batched"), data=paths["batched"])
    yield Row(f"naive per-pair loop, {size}", naive, "s/video", note=per_family("naive"), data=paths["naive"])
    yield Row("scoring speed-up over the naive loop", naive / batched, "x", target="scoring_speedup",
              checked=naive / batched,
              note=f"{naive / batched:.2f}x the per-pair loop, target {SCORING_MIN_SPEEDUP:g}x; same scores on both "
                   f"paths (cosines within {score_throughput.COSINE_TOLERANCE:g}, pair scores within "
                   f"{score_throughput.PAIR_SCORE_TOLERANCE:g} relative, same D.D)")


# --- 5. one training step -----------------------------------------------------------------------------------------
def train_step_section(ctx: Context) -> Iterator[Row]:
    """One optimizer step (2 micro-steps) of the shared model's reference LoRA, checkpointing on; restored after."""
    model, _, lora_cfg, _ = ctx.transformer()
    step_latency.ensure_reference_lora(model, lora_cfg)
    reference_config = ReferenceConfig(mode="joint", **lora_cfg)
    frames, height, width = train_step.TINY_VIDEO if ctx.tiny else TRAINING_CLIP
    generator = torch.Generator().manual_seed(0)
    with train_step.reference_lora_training(model, checkpointing=True) as trainable:
        inputs = train_step.training_inputs(model.config, frames, height, width, None, ctx.device, ctx.dtype,
                                            generator)
        step = train_step.optimizer_step_fn(model, trainable, inputs, reference_config, ACCUMULATION, ctx.dtype,
                                            generator)
        timing = train_step.time_optimizer_steps(step, ctx.warmup, 1, ctx.device)
    seconds = timing["seconds_per_optimizer_step"]
    setting = (f"{frames}x{height}x{width}, LoRA rank {reference_config.lora_rank}, gradient checkpointing, "
               f"{str(ctx.dtype).removeprefix('torch.')}")
    yield Row(f"optimizer step ({ACCUMULATION} micro-steps), {setting}", seconds, "s",
              note=f"{seconds / ACCUMULATION:.2f} s per micro-step, loss {timing['last_loss']:.3f}", data=timing)
    yield Row("training peak memory", timing["peak_memory_gib"], "GiB", target="train_memory",
              checked=timing["peak_memory_gib"], note="CUDA only" if ctx.device.type != "cuda" else "")


# --- 6. compiled --------------------------------------------------------------------------------------------------
def compiled_section(ctx: Context) -> Iterator[Row]:
    """``torch.compile`` the shared transformer in place and time :data:`step_latency.COMPILED_VARIANTS` one by one,
    each only if about its compile + timing time is left; then the video from the compiled cached step."""
    model, _, lora_cfg, inputs = ctx.transformer()
    step_latency.ensure_reference_lora(model, lora_cfg)
    step_latency.compile_transformer(model, ctx.compile_backend, ctx.compile_mode)
    timings: dict[str, dict[str, Any]] = {}
    needed = 0.0  # unknown before the first variant compiles: try it (the section's alarm is the backstop)
    with torch.no_grad():
        for name in step_latency.COMPILED_VARIANTS:
            if ctx.time_left() < needed:
                yield Row(f"{name}, compiled", None, "s/step", target=MODE_TARGETS.get(name.split(",")[0]),
                          status=UNMEASURED, note=f"not run: about {needed:.0f} s needed, {ctx.time_left():.0f} s left")
                continue
            timing = step_latency.time_compiled_variant(model, inputs, name, lora_cfg, ctx.warmup, ctx.steps)
            timings[name] = timing
            needed = timing["first_call_s"] + (ctx.warmup + ctx.steps) * timing["median_s"]
            yield step_row(timing, timings.get("vanilla"), "compiled vanilla")
    step = timings.get(step_latency.FULL_CACHED)
    yield video_row(f"{ctx.video_steps}-step video, compiled", ctx, step and step["median_s"],
                    ctx.results.get("end_to_end"), f"compiled '{step_latency.FULL_CACHED}' step")


#: The sections, in run order (budgets and minimums in seconds, sized for an H100/H200; see the module docstring).
SECTIONS: list[Section] = [
    Section("cuda_tests", "tests/test_cuda.py (subprocess)", cuda_tests_section, budget_s=110, min_s=20,
            targets=("cuda_tests", "metric_drift")),
    Section("step_latency", "per-step latency, CFG batch 2", step_latency_section, budget_s=120, min_s=45,
            targets=("joint_step", "cached_step", "tab_erae")),
    Section("end_to_end", "VAE encode/decode, 50-step video", end_to_end_section, budget_s=60, min_s=20,
            targets=("video_50",)),
    Section("scoring", "scoring throughput, 5 metrics", scoring_section, budget_s=90, min_s=25,
            targets=("scoring_seconds", "scoring_speedup")),
    Section("train_step", "one training step", train_step_section, budget_s=60, min_s=25, targets=("train_memory",)),
    Section("compiled", "torch.compile rows (if time allows)", compiled_section, budget_s=math.inf, min_s=90),
]


def register_section(section: Section, before: str | None = None) -> None:
    """Add ``section`` to :data:`SECTIONS`: at the end, or just before the section named ``before``."""
    names = [existing.name for existing in SECTIONS]
    if section.name in names:
        raise ValueError(f"a section named {section.name!r} is already registered")
    unknown = [key for key in section.targets if key not in TARGETS]
    if unknown:
        raise ValueError(f"section {section.name!r}: unknown target(s) {unknown}; add them to TARGETS first")
    SECTIONS.insert(names.index(before) if before is not None else len(SECTIONS), section)


# --- 7. the comparison baselines, seconds per video per stage ----------------------------------------------------
def baselines_section(ctx: Context) -> Iterator[Row]:
    """Each baseline's stages at real size with random weights (``baseline_timing``: its cost model run for real):
    a few denoiser steps extrapolated to the default count, one of every other call; in
    :data:`baseline_timing.ORDER`, each only if about its time is left (else a row says why)."""
    measured: dict[str, Any] = ctx.results.setdefault("baselines", {})
    stage2_done = False
    for name in baseline_timing.ORDER:
        need = baseline_timing.need_seconds(name, ctx.tiny)
        if ctx.time_left() < need:
            yield Row(f"{name}, s/video", None, "s", status=UNMEASURED,
                      note=f"not run: about {need:.0f} s needed, {ctx.time_left():.0f} s left")
            continue
        cost = baseline_timing.measure_method(name, ctx.device, ctx.tiny, warmup=ctx.warmup or 1,
                                              repeats=min(ctx.steps, 2))
        measured[name] = cost.to_dict()
        for index, stage in enumerate(cost.stages):
            if not stage.measured or (index == 1 and stage2_done):
                continue  # a stage without a model; stage 2 reported once (the same for every two-stage method)
            rate = stage.tflops / stage.seconds if stage.seconds else 0.0
            yield Row(f"{name}: {stage.name}, s/video", stage.seconds, "s",
                      note=f"peak {stage.peak_gib:.1f} GiB, {stage.tflops:.3g} TFLOP ({rate:.3g} TFLOP/s); "
                           f"{stage.notes}", data={"stage": dataclasses.asdict(stage)})
        if len(cost.stages) > 1:
            stage2_done = True
            yield Row(f"{name}: video (stage 1 + stage 2), s/video", cost.seconds_per_video, "s",
                      note=f"peak {cost.peak_gib:.1f} GiB (stages run one after the other)",
                      data={"tflops": cost.tflops})


register_section(Section("baselines", "comparison baselines, s/video per stage (random weights)", baselines_section,
                         budget_s=150, min_s=40), before="compiled")


# --- the report ---------------------------------------------------------------------------------------------------
@dataclass
class SectionResult:
    """A section's place in the report: ``pending`` until it runs, then ``ok`` / ``skipped`` / ``timeout`` /
    ``error`` / ``interrupted`` (with the reason), its wall time, budget and rows."""

    name: str
    title: str
    targets: list[str] = field(default_factory=list)
    status: str = "pending"
    reason: str = ""
    budget_s: float | None = None
    wall_s: float | None = None
    rows: list[Row] = field(default_factory=list)


#: The Markdown report's warning when the run was not the real 5B shapes on a GPU.
NOT_MEANINGFUL = "**Not the real 5B shapes on a GPU: these numbers and their pass/fail mean nothing.**"


def overall_status(statuses: list[str]) -> str:
    """A target's status from its rows': ``pass`` if every measured row passes, ``fail`` if none does, ``partial``
    in between, ``unmeasured`` without a measured row."""
    measured = [status for status in statuses if status in (PASS, FAIL)]
    if not measured:
        return UNMEASURED
    return PASS if FAIL not in measured else FAIL if PASS not in measured else "partial"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub table (pipes in cells escaped)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in rows])


@dataclass
class Report:
    """The run's metadata and sections; written as JSON and Markdown after every row."""

    meta: dict[str, Any]
    sections: list[SectionResult]
    json_path: Path
    markdown_path: Path
    started: float = _STARTED  # ``time.monotonic()`` at the start of the run

    def log(self, message: str) -> None:
        """A progress line, stamped with the seconds since the start."""
        print(f"[{time.monotonic() - self.started:6.1f} s] {message}", flush=True)

    def target_summary(self) -> list[dict[str, Any]]:
        """Per target: its :func:`overall_status`, and what measured it (or, without a row, the status and reason
        of the sections that should have)."""
        summary = []
        for key, target in TARGETS.items():
            rows = [(section, row) for section in self.sections for row in section.rows if row.target == key]
            declared = [section for section in self.sections if key in section.targets]
            if not rows and not declared:
                continue
            measured = [f"{s.name}: {r.name} {target.show(r.checked) if r.checked is not None else r.shown_value()} "
                        f"{r.status}" for s, r in rows]
            if not rows:
                measured += [f"{s.name}: {s.status}{' (' + s.reason + ')' if s.reason else ''}" for s in declared]
            status = overall_status([row.status for _, row in rows])
            summary.append({"target": key, "text": target.text, "status": status, "measured": measured})
        return summary

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.meta,
            "targets": self.target_summary(),
            "sections": [
                {**dataclasses.asdict(section), "rows": [dataclasses.asdict(row) for row in section.rows]}
                for section in self.sections
            ],
        }

    def to_markdown(self) -> str:
        meta = self.meta
        state = "finished" if meta["finished"] else "running"
        if meta["interrupted"]:
            state = f"INTERRUPTED by {meta['interrupted']}"
        commit = (meta["git_commit"] or "unknown")[:12] + (" (uncommitted changes)" if meta["git_dirty"] else "")
        header = (
            f"{meta['device_name']} ({meta['device']}), {meta['dtype']}, torch {meta['torch']}, diffusers "
            f"{meta['diffusers']}, commit {commit}; **random weights** (seeded: timings only); started "
            f"{meta['started_at']}; {meta['elapsed_s']:.0f} s of the {meta['budget_s']:.0f} s budget; {state}."
        )
        lines = ["# GPU acceptance", "", header]
        if not meta["targets_meaningful"]:
            lines += ["", NOT_MEANINGFUL]
        lines += ["", "## Targets", "", markdown_table(
            ["target", "status", "measured"],
            [[t["text"], t["status"], "; ".join(t["measured"]) or "-"] for t in self.target_summary()],
        )]
        measurements = [
            [section.name, row.name, row.shown_value(),
             TARGETS[row.target].show(row.checked) if row.target else "-",
             TARGETS[row.target].text if row.target else "-", row.status, row.note or "-"]
            for section in self.sections for row in section.rows
        ]
        lines += ["", "## Measurements", "", markdown_table(
            ["section", "measurement", "value", "vs target", "target", "status", "notes"], measurements)]
        lines += ["", "## Sections", "", markdown_table(
            ["section", "title", "status", "wall s", "budget s", "reason"],
            [[s.name, s.title, s.status, "-" if s.wall_s is None else f"{s.wall_s:.1f}",
              "-" if s.budget_s is None else f"{s.budget_s:.0f}", s.reason or "-"] for s in self.sections],
        )]
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        """Rewrite both files atomically (temp file, then rename)."""
        self.meta["elapsed_s"] = time.monotonic() - self.started
        atomic_write_json(self.json_path, self.to_dict())
        atomic_write_text(self.markdown_path, self.to_markdown())


def git_state() -> tuple[str | None, bool]:
    """This checkout's commit and whether tracked files differ from it (``None``, False outside git)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None, False
    if commit.returncode != 0:
        return None, False
    return commit.stdout.strip(), bool(dirty.stdout.strip())


def environment(ctx: Context) -> dict[str, Any]:
    """Device, library versions, the commit and the random-weights stamp."""
    commit, dirty = git_state()
    cuda = ctx.device.type == "cuda"
    name = torch.cuda.get_device_name(ctx.device) if cuda else (platform.processor() or "cpu")
    return {
        "device": str(ctx.device), "device_name": name, "dtype": str(ctx.dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "cuda": torch.version.cuda, "diffusers": diffusers.__version__, "python": platform.python_version(),
        "git_commit": commit, "git_dirty": dirty, "random_weights": True, "tiny": ctx.tiny,
        "targets_meaningful": cuda and not ctx.tiny, "steps": ctx.steps, "warmup": ctx.warmup,
        "video_steps": ctx.video_steps, "compile_backend": ctx.compile_backend, "compile_mode": ctx.compile_mode,
    }


# --- running ------------------------------------------------------------------------------------------------------
class SectionTimeout(BaseException):
    """A section ran past its budget (raised by SIGALRM; a BaseException so that ``except Exception`` in the
    measured code cannot swallow it)."""


class Interrupted(BaseException):
    """SIGTERM or SIGINT: stop, keep what was measured."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def alarm(seconds: float) -> Iterator[None]:
    """Raise :class:`SectionTimeout` in the main thread after ``seconds`` (no alarm for an infinite budget)."""

    def expire(signum: int, frame: Any) -> None:
        raise SectionTimeout()

    previous = signal.signal(signal.SIGALRM, expire)
    if math.isfinite(seconds):
        signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn the first SIGTERM/SIGINT into :class:`Interrupted`; later ones are ignored while the report is saved."""
    stops = (signal.SIGTERM, signal.SIGINT)

    def stop(signum: int, frame: Any) -> None:
        for other in stops:
            signal.signal(other, signal.SIG_IGN)
        raise Interrupted(signum)

    previous = {signum: signal.signal(signum, stop) for signum in stops}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def cpu_threads(count: int) -> Iterator[None]:
    """torch's intra-op CPU threads set to ``count`` for the block (0: left alone), restored afterwards."""
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _release_memory(device: torch.device) -> None:
    """Give a finished section's GPU memory back (nothing to do on the CPU: a full gc costs seconds there)."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


def _row_line(row: Row) -> str:
    line = f"    {row.name}: {row.shown_value()}"
    if row.target:
        line += f" | {TARGETS[row.target].show(row.checked)} vs target {TARGETS[row.target].text}: {row.status}"
    return line + (f" | {row.note}" if row.note else "")


def run_section(section: Section, result: SectionResult, ctx: Context, report: Report) -> None:
    """Run one section under its budget, recording its rows as they come (the report rewritten after each)."""
    left = ctx.deadline - time.monotonic()
    if left < section.min_s:
        result.status, result.reason = "skipped", f"needs >= {section.min_s:.0f} s, {max(left, 0):.0f} s left"
        report.log(f"== {section.name}: skipped ({result.reason})")
        return
    result.budget_s = min(section.budget_s, left)
    ctx.section_deadline = time.monotonic() + result.budget_s
    report.log(f"== {section.name}: {section.title} (budget {result.budget_s:.0f} s)")
    started = time.monotonic()
    try:
        with alarm(result.budget_s):
            for row in section.run(ctx):
                result.rows.append(row)
                report.log(_row_line(row))
                report.write()
        result.status = "ok"
    except SectionTimeout:
        result.status, result.reason = "timeout", f"cut off at its {result.budget_s:.0f} s budget"
    except Interrupted as stop:
        result.status, result.reason = "interrupted", f"{stop} after {time.monotonic() - started:.0f} s"
        raise
    except Exception as error:  # a broken section must not cost the others their time
        traceback.print_exc()
        result.status, result.reason = "error", f"{type(error).__name__}: {error}"
    finally:
        result.wall_s = time.monotonic() - started
        ctx.section_deadline = math.inf
        _release_memory(ctx.device)
        if result.status != "ok":
            report.log(f"   {section.name}: {result.status} ({result.reason})")


def run_sections(sections: list[Section], ctx: Context, report: Report) -> None:
    """Run ``sections`` in order; on SIGTERM/SIGINT stop and record it (the report keeps the finished ones)."""
    with stop_on_signals():
        try:
            for section, result in zip(sections, report.sections):
                run_section(section, result, ctx, report)
                report.write()
            report.meta["finished"] = True
        except Interrupted as stop:
            report.meta["interrupted"] = str(stop)
            report.log(f"interrupted by {stop}: the report keeps the sections done so far")
        finally:
            report.write()


# --- command line -------------------------------------------------------------------------------------------------
def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _budget_override(text: str) -> tuple[str, float]:
    name, _, seconds = text.partition("=")
    try:
        return name.strip(), float(seconds)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--section-budget wants NAME=SECONDS, got {text!r}") from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny presets and shapes (a CPU check of the command)")
    parser.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                        help="model dtype (default: bfloat16 on CUDA, float32 on the CPU)")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help="the whole run's budget in seconds, from process start")
    parser.add_argument("--section-budget", type=_budget_override, action="append", default=[],
                        metavar="NAME=SECONDS", help="override one section's budget (repeatable)")
    parser.add_argument("--sections", type=_names, default=None, help="comma-separated sections to run (default all)")
    parser.add_argument("--skip", type=_names, default=[], help="comma-separated sections not to run")
    parser.add_argument("--extra-sections", nargs="*", default=[], metavar="MODULE",
                        help="modules to import first; their register_section() calls add sections")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 3; tiny 1)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per variant (default 1; tiny 0)")
    parser.add_argument("--video-steps", type=int, default=50, help="denoising steps of the extrapolated video")
    parser.add_argument("--compile-backend", default=None,
                        help="torch.compile backend (default: inductor on CUDA; eager, i.e. dynamo capture "
                        "only, elsewhere)")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune-no-cudagraphs")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's; 1 with --tiny, whose ops are too small to share)")
    parser.add_argument("--out-dir", type=Path, default=REPO / "reports",
                        help="where gpu_acceptance.json/.md go (gpu_acceptance_tiny.* with --tiny)")
    return parser.parse_args(argv)


def select_sections(parser_args: argparse.Namespace) -> list[Section]:
    """The registered sections named by ``--sections`` (all by default) minus ``--skip``, budgets overridden."""
    for module in parser_args.extra_sections:
        importlib.import_module(module)
    known = {section.name: section for section in SECTIONS}
    wanted = parser_args.sections or list(known)
    overrides = dict(parser_args.section_budget)
    unknown = sorted(set(wanted + parser_args.skip + list(overrides)) - set(known))
    if unknown:
        raise SystemExit(f"unknown section(s) {unknown}; known: {', '.join(known)}")
    return [
        dataclasses.replace(section, budget_s=overrides.get(section.name, section.budget_s))
        for section in SECTIONS if section.name in wanted and section.name not in parser_args.skip
    ]


def main(argv: list[str] | None = None, started: float = _STARTED) -> dict[str, Any]:
    """Run the selected sections and return the report (also written to ``--out-dir``); the budget counts from
    ``started`` (``time.monotonic()``; default: when this module was imported, i.e. about the process start)."""
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run with --tiny --device cpu for a check of the command")
    if device.type != "cuda" and not args.tiny:
        raise SystemExit("the real 5B shapes need a CUDA device; use --tiny --device cpu on a CPU")
    sections = select_sections(args)
    ctx = Context(
        device=device, dtype=getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32")),
        tiny=args.tiny, steps=args.steps or (1 if args.tiny else 3),
        warmup=args.warmup if args.warmup is not None else (0 if args.tiny else 1), video_steps=args.video_steps,
        compile_backend=args.compile_backend or ("inductor" if device.type == "cuda" else "eager"),
        compile_mode=args.compile_mode, deadline=started + args.budget_s,
    )
    stem = "gpu_acceptance_tiny" if args.tiny else "gpu_acceptance"
    meta = {
        **environment(ctx), "command": [sys.argv[0], *(sys.argv[1:] if argv is None else argv)],
        "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "budget_s": args.budget_s, "elapsed_s": 0.0, "finished": False, "interrupted": None,
    }
    report = Report(meta, [SectionResult(s.name, s.title, list(s.targets)) for s in sections],
                    args.out_dir / f"{stem}.json", args.out_dir / f"{stem}.md", started)
    report.write()
    report.log(f"{meta['device_name']}, {meta['dtype']}, random weights; {len(sections)} sections, budget "
               f"{args.budget_s:.0f} s; writing {report.json_path} and {report.markdown_path}")
    with cpu_threads(args.threads if args.threads is not None else (1 if args.tiny else 0)):
        run_sections(sections, ctx, report)
    print("\n" + report.to_markdown(), flush=True)
    return report.to_dict()


def exit_code(report: dict[str, Any]) -> int:
    """128 + the signal number if interrupted, 1 if a section raised, else 0 (failed targets are in the report)."""
    if report["interrupted"]:
        return 128 + signal.Signals[report["interrupted"]].value
    return 1 if any(section["status"] == "error" for section in report["sections"]) else 0


if __name__ == "__main__":
    sys.modules.setdefault("gpu_acceptance", sys.modules[__name__])  # extra sections' `import gpu_acceptance`
    sys.exit(exit_code(main()))
