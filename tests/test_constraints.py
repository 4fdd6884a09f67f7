"""constraints.txt pins every requirement of the project at a version its pyproject.toml accepts."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from pin_constraints import read_pins, render  # noqa: E402


def _requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"]) + [line for extra in project["optional-dependencies"].values()
                                             for line in extra]
    return [Requirement(line) for line in lines]


def test_every_requirement_is_pinned_within_its_range():
    pins = read_pins(REPO / "constraints.txt")
    problems = []
    for requirement in _requirements():
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        version = pins.get(canonicalize_name(requirement.name))
        if version is None:
            problems.append(f"{requirement.name}: not pinned")
        elif not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{requirement.name}=={version} outside {requirement.specifier}")
    assert problems == []


def test_pins_are_exact_and_round_trip(tmp_path):
    pins = read_pins(REPO / "constraints.txt")
    assert all(version and "," not in version and "*" not in version for version in pins.values())
    path = tmp_path / "c.txt"
    path.write_text(render(pins))
    assert read_pins(path) == pins
