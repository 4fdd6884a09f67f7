"""The repository speaks of itself: no tracker numbers or words of the workflow that produced it in tracked files.

A reader of this repository has no tracker to look up and no brief to read, so code, tests, docs, benchmarks and
reports say what a thing is and why, citing the paper, upstream files or docs. The rule, per forbidden word:

* a tracker reference, the word ``issue`` (any case, singular or plural, ``#`` optional) followed by a number: always
  forbidden; ``issue`` without a number (``issue tracking`` in the licence texts) is plain English;
* ``brief`` (a workflow document) and ``drew no GPU``: always forbidden;
* ``slot``: only the template placeholder ``{entity}`` / ``entity slot`` of the prompt templates;
* ``session``: only a POSIX process session (``its own session``, ``session of its own``: what setsid makes) and
  a code attribute (pytest's ``request.session``);
* ``task``: a SLURM / torchrun / submitit task is a technical term; forbidden are ``task`` after this, our, my or
  your, and a numbered ``task N``;
* ``the lead``: always forbidden.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: (forbidden pattern, allowed technical use removed from the line first), both case-insensitive, line by line.
FORBIDDEN: tuple[tuple[str, str | None], ...] = (
    (r"\bissues?\s+#?\d", None),
    (r"\bbrief\b", None),
    (r"\bdrew\s+no\s+gpu\b", None),
    (r"\bslots?\b", r"(\{+entity\}+`*|\bentity)\s+slots?\b"),
    (r"\bsessions?\b", r"\b(its|their) own sessions?\b|\bsessions? of (its|their) own\b|\.session\b"),
    (r"\b(this|our|my|your)\s+task\b|(?<![-\w])tasks?\s+#?\d", None),
    (r"\bthe\s+lead\b", None),
)


def offending_lines(text: str) -> list[tuple[int, str]]:
    """The (line number, line) pairs of ``text`` that use a forbidden word outside its allowed technical use."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        for pattern, allowed in FORBIDDEN:
            cleaned = re.sub(allowed, "", line, flags=re.IGNORECASE) if allowed else line
            if re.search(pattern, cleaned, flags=re.IGNORECASE):
                found.append((number, line.strip()))
                break
    return found


@pytest.mark.parametrize(("line", "bad"), [
    # the forbidden examples are spelt in two pieces, so that a plain grep of the repository finds none of them
    ("Iss" "ue 10, section 7.", True), ("(iss" "ue 8.2)", True), ("see iss" "ues 3", True),
    ("issue tracking systems", False), ("named in the project " "brief", True), ("th" "is task drew no GPU", True),
    ("inside an 8-minute slot", True),
    ("one ``{entity}`` slot", False), ("with an entity slot", False), ("in one session", True),
    ("torchrun starts each worker in its own session", False), ("request.session.items", False), ("a session of its own", False),
    ("a SLURM array task", False), ("task i of the array", False), ("task 3 of the brief", True),
    ("ask the lead", True), ("--gpus-per-task 1", False), ("one {{entity}} slot", False),
])
def test_the_rule_flags_workflow_words_and_keeps_technical_terms(line, bad):
    assert bool(offending_lines(line)) is bad


def test_no_tracked_file_refers_to_the_workflow():
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    this_file = Path(__file__).resolve().relative_to(REPO).as_posix()
    problems = []
    for name in filter(None, listed.decode().split("\0")):
        path = REPO / name
        if name == this_file or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # binary files (videos, images) carry no prose
            continue
        problems += [f"{name}:{number}: {line}" for number, line in offending_lines(text)]
    assert problems == []
