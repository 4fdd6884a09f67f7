"""DreamBench: the DreamBooth dataset (Ruiz et al., CVPR 2023) as a suite of 750 cases.

Spec: ``suites/data/dreambench.json`` (version ``v1``), made from ``dataset/prompts_and_classes.txt`` of
google/dreambooth at commit ``e9b8c013ef2e30ab3d5d9018808513e9093e3bc4``: the 30 subjects with their class words,
the sha256 and size of each of their 158 reference images, and the two 25-prompt lists copied verbatim.
Images are not shipped; ``videobench data download dreambench`` fetches them.

Case rule: each subject meets the 25 prompts of its list (the live-subject list for the 9 dogs and cats, the
object list for the 21 objects) -> 30 x 25 = 750 cases, in spec order (subject, then prompt index).
``case_id = "<subject>-p<NN>"`` with ``NN`` the 0-based index in that list (``dog2-p00`` .. ``dog2-p24``);
``prompt_id = "<live|object>-p<NN>"``. The DreamBooth ``'{0} {1}'`` template is filled with an empty unique token
and the class word, whitespace collapsed: ``'a {0} {1} in the jungle'`` -> ``'a dog in the jungle'``; the entity is
the class word.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

from videobench.cases import Case
from videobench.data import DataError, DataFile, ShippedFile, join_inside, require_files, safe_relpath
from videobench.suites.registry import Suite, register_suite

NAME = "dreambench"
SPEC_FILE = "dreambench.json"


def fill_prompt(template: str, class_word: str, unique_token: str = "") -> str:
    """DreamBooth's ``template.format(unique_token, class_token)`` with whitespace collapsed (empty token)."""
    return " ".join(template.format(unique_token, class_word).split())


@functools.lru_cache(maxsize=None)
def load_spec() -> dict[str, Any]:
    """The shipped spec, validated (paths, checksums, prompt counts)."""
    text = resources.files("videobench.suites").joinpath("data", SPEC_FILE).read_text(encoding="utf-8")
    return parse_spec(json.loads(text))


def parse_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Validate a DreamBench spec; raise :class:`DataError` naming the first problem."""
    for kind in ("object", "live"):
        prompts = spec["prompts"][kind]
        if len(prompts) != 25 or not all("{0}" in p and "{1}" in p for p in prompts):
            raise DataError(f"dreambench spec: the {kind} list must hold 25 '{{0}} {{1}}' templates")
    for subject in spec["subjects"]:
        safe_relpath(subject["id"], "subject id")
        if "/" in subject["id"] or subject["kind"] not in ("object", "live"):
            raise DataError(f"dreambench spec: bad subject entry {subject['id']!r}")
    data_files(spec)  # validates every path and checksum
    return spec


def _file(entry: dict[str, Any], source: dict[str, Any]) -> DataFile:
    return DataFile(
        path=entry["path"], sha256=entry["sha256"], size=int(entry["size"]), repo=source["repo"],
        commit=source["commit"], source_path=entry["source_path"],
        mirror_path=source["mirror_prefix"] + entry["source_path"],
    )


def subject_files(spec: dict[str, Any], subject_id: str) -> list[DataFile]:
    """The reference images of one subject."""
    for subject in spec["subjects"]:
        if subject["id"] == subject_id:
            return [_file(entry, spec["source"]) for entry in subject["images"]]
    raise KeyError(f"dreambench has no subject {subject_id!r}")


def data_files(spec: dict[str, Any] | None = None, subjects: Iterable[str] | None = None) -> list[DataFile]:
    """Every downloadable file: the subjects' images (all, or ``subjects``) and the attribution files."""
    spec = spec if spec is not None else load_spec()
    wanted = None if subjects is None else set(subjects)
    files = [
        _file(entry, spec["source"])
        for subject in spec["subjects"] if wanted is None or subject["id"] in wanted
        for entry in subject["images"]
    ]
    files += [_file(entry, spec["source"]) for entry in spec["attribution_files"]]
    return files


def shipped_files(spec: dict[str, Any] | None = None) -> list[ShippedFile]:
    spec = spec if spec is not None else load_spec()
    return [ShippedFile(**entry) for entry in spec["shipped_files"]]


def make_cases(root: Path, spec: dict[str, Any] | None = None) -> tuple[Case, ...]:
    """The 750 cases (no file check; see :func:`build`)."""
    spec = spec if spec is not None else load_spec()
    cases = []
    for subject in spec["subjects"]:
        refs = tuple(str(join_inside(root, entry["path"])) for entry in subject["images"])
        kind, class_word = subject["kind"], subject["class"]
        for index, template in enumerate(spec["prompts"][kind]):
            cases.append(Case(
                case_id=f"{subject['id']}-p{index:02d}", suite=NAME, subject=subject["id"],
                prompt=fill_prompt(template, class_word), entity=class_word, references=refs, category=kind,
                prompt_id=f"{kind}-p{index:02d}", extra={"template": template},
            ))
    return tuple(cases)


def _subject_ids() -> list[str]:
    return [subject["id"] for subject in load_spec()["subjects"]]


@register_suite(NAME, label="DreamBench", version=load_spec()["version"], description=load_spec()["description"],
                order=10, files=lambda subjects: data_files(subjects=subjects), shipped=shipped_files,
                subjects=_subject_ids, count=lambda: len(make_cases(Path("."))))
def build(root: Path) -> Suite:
    """The DreamBench suite over ``root``; raises :class:`~videobench.data.MissingDataError` without the images."""
    spec = load_spec()
    require_files(NAME, root, [f for s in spec["subjects"] for f in subject_files(spec, s["id"])])
    return Suite(name=NAME, version=spec["version"], description=spec["description"], cases=make_cases(root, spec))
