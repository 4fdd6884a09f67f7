"""The unit of evaluation: one (subject, reference images, prompt) case of a suite."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Case:
    """One benchmark case.

    Attributes:
        case_id: stable identifier, unique within the suite (also the video's file stem).
        suite: the suite name (``smoke``, ``dreambench``, ``videobench``).
        subject: the subject id (e.g. ``dog2``, ``biplane``).
        prompt: the full text prompt, the entity word already filled in.
        entity: the entity word as it appears in ``prompt`` (ERAE and CLIP-T use it).
        references: absolute paths of the subject's reference images.
        category: the subject's category (``animal``, ``vehicle``, ...), for breakdowns.
        prompt_id: identifier of the prompt template within the suite.
    """

    case_id: str
    suite: str
    subject: str
    prompt: str
    entity: str
    references: tuple[str, ...]
    category: str = ""
    prompt_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_record(self) -> dict[str, Any]:
        """The case's fields as written to ``cases.jsonl`` (without run-specific fields)."""
        record = asdict(self)
        record["references"] = list(self.references)
        return record
