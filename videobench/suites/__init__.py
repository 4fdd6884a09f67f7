"""Benchmark suites: versioned specs (data in ``suites/data``) turned into :class:`~videobench.cases.Case` lists.

``load_suite(name, data_root)`` is the one entry point. Suites: ``smoke`` (embedded, drawn by code),
``dreambench`` (the DreamBooth dataset, 750 cases) and ``videobench`` (50 subjects, versioned prompts).
"""

from __future__ import annotations

from dataclasses import dataclass

from videobench.cases import Case


@dataclass(frozen=True)
class Suite:
    name: str
    version: str
    description: str
    cases: tuple[Case, ...]
    #: Default video geometry for methods generating this suite (``--frames/--height/--width`` override).
    #: The paper's setting is 49 frames at 480x720, 8 fps; the smoke suite is smaller so that the whole
    #: generate + score + report loop runs on a laptop CPU.
    num_frames: int = 49
    height: int = 480
    width: int = 720
    fps: int = 8

    def select(self, case_ids: list[str] | None = None, limit: int | None = None) -> list[Case]:
        """The cases named in ``case_ids`` (in suite order; unknown ids raise), then the first ``limit``."""
        cases = list(self.cases)
        if case_ids:
            known = {case.case_id for case in cases}
            unknown = [case_id for case_id in case_ids if case_id not in known]
            if unknown:
                raise KeyError(f"suite {self.name}: unknown case id(s): {', '.join(unknown)}")
            wanted = set(case_ids)
            cases = [case for case in cases if case.case_id in wanted]
        if limit is not None:
            cases = cases[:limit]
        return cases


from videobench.suites.registry import available_suites, load_suite  # noqa: E402  (registry imports Suite)

__all__ = ["Suite", "available_suites", "load_suite"]
