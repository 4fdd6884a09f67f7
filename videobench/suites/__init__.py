"""Benchmark suites: versioned specs (data in ``suites/data``) turned into :class:`~videobench.cases.Case` lists.

``load_suite(name, data_root)`` is the one entry point. Suites register themselves
(:func:`~videobench.suites.registry.register_suite`): built in are ``smoke`` (embedded, drawn by code),
``dreambench`` (the DreamBooth dataset, 750 cases) and ``videobench`` (50 subjects, versioned prompts).
"""

from videobench.suites.registry import (
    Suite,
    SuiteSpec,
    available_suites,
    default_suite,
    downloadable_suites,
    get_suite,
    load_suite,
    register_suite,
    suite_label,
    suite_order,
    suite_specs,
)

__all__ = [
    "Suite", "SuiteSpec", "available_suites", "default_suite", "downloadable_suites", "get_suite", "load_suite", "register_suite",
    "suite_label", "suite_order", "suite_specs",
]
