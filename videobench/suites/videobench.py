"""VideoBench v1: 50 subjects x motion-rich video prompts (spec ``suites/data/videobench-v1.json``).

Subjects: the 30 DreamBench subjects plus the 22 of ``objects.json`` are 52 candidates; 50 are kept. ``dog6`` (a
corgi puppy, the same breed as ``dog``) and ``shiny_sneaker`` (same class and silhouette as
``colorful_sneaker``) are left out, as recorded in the spec's ``excluded`` list; every category stays
(animal, human, vehicle, building, clothing, accessory, food, furniture, instrument, toy, household).

Prompts: 109 templates written for this package with one ``{entity}`` slot, each tagged with the prompt groups it
fits (``pet``, ``wild``, ``human``, ``aircraft``, ``land_vehicle``, ``building``, ``toy``, ``garment``,
``headwear``, ``footwear``, ``bag``, ``household``, ``food``, ``furniture``, ``instrument``) and with its kinds of
motion (``action``, ``interaction``, ``camera``).

Case rule (exact): every subject belongs to exactly one group; a subject meets every prompt whose ``groups``
contain that group. Cases are ordered by subject (spec order), then prompt (spec order);
``case_id = "<subject>-<prompt id>"`` (e.g. ``dog2-p010``). Prompt ids are never renumbered; a later version
appends. v1 has 530 cases, 5 to 17 prompts per subject.

Filling: ``{entity}`` becomes the subject's entity (the DreamBench class word, or objects.json ``entity``) and
``a {entity}`` becomes ``an {entity}`` before a vowel (``an elephant``, ``an excavator``).
"""

from __future__ import annotations

import functools
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

from videobench.cases import Case
from videobench.data import DataError, DataFile, ShippedFile, join_inside, require_files, safe_relpath
from videobench.suites import dreambench
from videobench.suites.registry import Suite, register_suite

NAME = "videobench"
SPEC_FILE = "videobench-v1.json"
_ARTICLE = re.compile(r"\b([Aa]) \{entity\}")


def fill_prompt(template: str, entity: str) -> str:
    """Put ``entity`` in the ``{entity}`` slot, fixing the indefinite article before a vowel."""
    if template.count("{entity}") != 1:
        raise DataError(f"videobench template must hold exactly one {{entity}} slot: {template!r}")
    if entity[:1].lower() in "aeiou":
        template = _ARTICLE.sub(lambda m: m.group(1) + "n {entity}", template)
    return " ".join(template.replace("{entity}", entity).split())


@functools.lru_cache(maxsize=None)
def load_spec() -> dict[str, Any]:
    text = resources.files("videobench.suites").joinpath("data", SPEC_FILE).read_text(encoding="utf-8")
    return parse_spec(json.loads(text))


def parse_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Validate a VideoBench spec (ids, groups, templates, paths); raise :class:`DataError` on the first problem."""
    groups = set(spec["groups"])
    ids = [p["id"] for p in spec["prompts"]]
    if len(set(ids)) != len(ids):
        raise DataError("videobench spec: duplicate prompt ids")
    for prompt in spec["prompts"]:
        fill_prompt(prompt["template"], "x")
        unknown = set(prompt["groups"]) - groups
        if unknown or not prompt["groups"]:
            raise DataError(f"videobench spec: prompt {prompt['id']} has unknown or no groups {sorted(unknown)}")
    db_ids = {s["id"] for s in dreambench.load_spec()["subjects"]}
    for subject in spec["subjects"]:
        safe_relpath(subject["id"], "subject id")
        if "/" in subject["id"] or subject["group"] not in groups:
            raise DataError(f"videobench spec: bad subject entry {subject['id']!r}")
        if subject["source"] == "dreambench" and subject["id"] not in db_ids:
            raise DataError(f"videobench spec: {subject['id']!r} is not a DreamBench subject")
    if len({s["id"] for s in spec["subjects"]}) != len(spec["subjects"]):
        raise DataError("videobench spec: duplicate subject ids")
    data_files(spec)  # validates every path and checksum
    return spec


def _object_file(entry: dict[str, Any]) -> DataFile:
    return DataFile(
        path=entry["path"], sha256=entry["sha256"], size=int(entry["size"]), repo=entry["repo"],
        commit=entry["commit"], source_path=entry["source_path"], mirror_path=entry["mirror_path"],
    )


def subject_files(spec: dict[str, Any], subject: dict[str, Any]) -> list[DataFile]:
    """A subject's reference images: DreamBench images under ``dreambench/``, the others under ``videobench/``."""
    if subject["source"] == "dreambench":
        return dreambench.subject_files(dreambench.load_spec(), subject["id"])
    return [_object_file(entry) for entry in subject["images"]]


def data_files(spec: dict[str, Any] | None = None, subjects: Iterable[str] | None = None) -> list[DataFile]:
    """Every downloadable file (images of all or of ``subjects``, plus DreamBench's attribution files)."""
    spec = spec if spec is not None else load_spec()
    wanted = None if subjects is None else set(subjects)
    files = [f for s in spec["subjects"] if wanted is None or s["id"] in wanted for f in subject_files(spec, s)]
    if any(s["source"] == "dreambench" for s in spec["subjects"]):
        db = dreambench.load_spec()
        files += [f for f in dreambench.data_files(db, subjects=()) if f.path not in {x.path for x in files}]
    return files


def shipped_files(spec: dict[str, Any] | None = None) -> list[ShippedFile]:
    spec = spec if spec is not None else load_spec()
    return [ShippedFile(**entry) for entry in spec["shipped_files"]] + dreambench.shipped_files()


def prompts_for(spec: dict[str, Any], subject: dict[str, Any]) -> list[dict[str, Any]]:
    """The case rule: every prompt whose groups contain the subject's group, in spec order."""
    return [p for p in spec["prompts"] if subject["group"] in p["groups"]]


def make_cases(root: Path, spec: dict[str, Any] | None = None) -> tuple[Case, ...]:
    """All cases by the case rule (no file check; see :func:`build`)."""
    spec = spec if spec is not None else load_spec()
    cases = []
    for subject in spec["subjects"]:
        refs = tuple(str(join_inside(root, f.path)) for f in subject_files(spec, subject))
        for prompt in prompts_for(spec, subject):
            cases.append(Case(
                case_id=f"{subject['id']}-{prompt['id']}", suite=NAME, subject=subject["id"],
                prompt=fill_prompt(prompt["template"], subject["entity"]), entity=subject["entity"],
                references=refs, category=subject["category"], prompt_id=prompt["id"],
                extra={"group": subject["group"], "motion": list(prompt["motion"])},
            ))
    return tuple(cases)


def _subject_ids() -> list[str]:
    return [subject["id"] for subject in load_spec()["subjects"]]


@register_suite(NAME, label="VideoBench", version=load_spec()["version"], description=load_spec()["description"],
                order=20, files=lambda subjects: data_files(subjects=subjects), shipped=shipped_files,
                subjects=_subject_ids, count=lambda: len(make_cases(Path("."))))
def build(root: Path) -> Suite:
    """The VideoBench suite over ``root``; raises :class:`~videobench.data.MissingDataError` without the images."""
    spec = load_spec()
    require_files(NAME, root, [f for s in spec["subjects"] for f in subject_files(spec, s)])
    version = spec["version"]
    return Suite(name=NAME, version=version, description=spec["description"], cases=make_cases(root, spec))
