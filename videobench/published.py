"""The paper's published tables: the one reader of ``videobench/paper/`` (``table1.csv``, ``table2.csv``,
``captions.json``; how the numbers were read from the paper: ``videobench/paper/README.md``).

Its readers: the plan of ``videobench reproduce`` (which rows, on which suites: :func:`published_rows`), the report
(the published numbers beside ours: :func:`published_frame`, :func:`published_caption`) and the cost of reproducing a
table (the registry's rows in the paper's order: :func:`in_published_order`).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from importlib import resources
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import pandas as pd

T = TypeVar("T")
#: The published tables and the column that labels each row (Table 1: the method, Table 2: the ablation setting).
TABLES: dict[str, str] = {"table1": "method", "table2": "setting"}


def _read(name: str) -> str:
    return resources.files("videobench").joinpath("paper", name).read_text(encoding="utf-8")


def _check(table: str) -> str:
    if table not in TABLES:
        raise ValueError(f"unknown published table {table!r}; choose {' or '.join(TABLES)}")
    return table


def published_rows(table: str) -> list[dict[str, str]]:
    """The rows of ``table`` (``table1`` or ``table2``) in the paper's order, every value as written in the CSV."""
    return list(csv.DictReader(_read(f"{_check(table)}.csv").splitlines()))


def published_frame(table: str) -> pd.DataFrame:
    """``table`` as a DataFrame (numbers parsed), for the report."""
    import pandas as pd

    return pd.read_csv(io.StringIO(_read(f"{_check(table)}.csv")))


def published_caption(table: str) -> dict[str, str]:
    """The title and caption of ``table`` (``captions.json``)."""
    return json.loads(_read("captions.json"))[_check(table)]


def in_published_order(table: str, by_label: Mapping[str, T]) -> dict[str, T]:
    """``by_label`` (row label -> anything, e.g. the methods that reproduce a row) in ``table``'s row order; labels
    the table does not have come last, sorted."""
    label = TABLES[_check(table)]
    order = {row[label]: int(row["row"]) for row in published_rows(table)}
    return dict(sorted(by_label.items(), key=lambda item: (order.get(item[0], len(order) + 1), item[0])))
