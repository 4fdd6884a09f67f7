"""Generate the first smoke case with every named method's tiny preset, in this process, into ``OUT/<method>``.

Run as ``python -m tests.contract.tiny_runs OUT NAME [NAME ...]`` by the contract test, twice in fresh processes (the
second in reverse order, so a method whose video depends on what ran before it in the process shows). For methods
with a cost model it then counts the FLOPs of one generation of the same case (models loaded and warmed up first)
with :func:`costmodel.counting.count_flops` for each prompt of :data:`FLOPS_PROMPTS`, into ``OUT/<method>/flops.json``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch

from costmodel.counting import count_flops
from videobench.generation import run_generation
from videobench.methods import ImageFirstGenerator, MethodContext, build_generator, get_method
from videobench.suites import load_suite

SUITE = "smoke"
#: The FLOP counts' prompts: a cost model counts the prompt encoders for an entity word of one token (e.g.
#: ``baselines.blip_diffusion.SUBJECT_TOKENS``) or two (``customvideox.method.COST_ENTITY_TOKENS``).
FLOPS_PROMPTS = {
    "one-token entity": ("a red circle bouncing from left to right across a white background", "circle"),
    "two-token entity": ("a teddy bear bouncing from left to right across a white background", "teddy bear"),
}


def tiny_context(suite) -> MethodContext:
    """The context ``videobench generate --preset tiny --suite smoke`` builds: the suite's geometry."""
    return MethodContext(preset="tiny", num_frames=suite.num_frames, height=suite.height, width=suite.width,
                         fps=suite.fps)


def generate_once(generator, case, seed: int) -> None:
    """One case end to end in memory (image then video for an image-first generator)."""
    if isinstance(generator, ImageFirstGenerator) and "image" in generator.phases:
        generator.generate(case, seed, generator.generate_image(case, seed))
    else:
        generator.generate(case, seed)


def main(out: Path, names: list[str]) -> None:
    torch.set_num_threads(1)  # tiny ops gain nothing from threads; one thread leaves the other core free
    suite = load_suite(SUITE)
    case = suite.cases[0]
    for name in names:
        spec = get_method(name)
        generator, options = build_generator(spec, {}, tiny_context(suite))
        run_generation(generator, suite, [case], out / name, seed=0, progress=False, metadata=spec.metadata(options))
        if spec.cost is not None:
            fresh, _ = build_generator(spec, {}, tiny_context(suite))
            generate_once(fresh, case, 1)  # loads and warms up (caches a method keeps across cases)
            flops = {}
            for label, (prompt, entity) in FLOPS_PROMPTS.items():
                counted = dataclasses.replace(case, prompt=prompt, entity=entity)
                _, flops[label] = count_flops(lambda generator=fresh, case=counted: generate_once(generator, case, 0))
            (out / name / "flops.json").write_text(json.dumps(flops))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
