"""Wall time of the quick ``videobench`` commands, each in fresh processes: median of several runs vs. its target.

    python benchmarks/cli_startup.py [--runs 5] [--only methods] [--root OTHER_CHECKOUT]

Measures ``videobench --help``, ``methods``, ``methods NAME`` for every registered method, ``suites``, ``metrics``,
``weights`` (targets 2 s) and ``python -c "import videobench"`` (1 s). Each command runs as
``python -m videobench.cli ...`` (what the ``videobench`` script runs, without a shell wrapper in front) in a new
process, so every run pays the full import cost. The machine's load average is printed beside the table: on a
shared machine the medians move with it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "videobench.cli"]


def method_names(root: Path) -> list[str]:
    """The methods ``root`` registers (listed in a subprocess, so that this process stays light)."""
    code = "from videobench.methods import available_methods; print(' '.join(available_methods()))"
    listed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(root)}, cwd=root)
    return listed.stdout.split()


def commands(root: Path, only: str | None) -> list[tuple[str, list[str], float]]:
    """``(label, argv, target seconds)`` of the commands measured: the one labelled ``only``, else those whose label
    contains it."""
    rows = [("import videobench", [sys.executable, "-c", "import videobench"], 1.0),
            ("videobench --help", [*CLI, "--help"], 2.0),
            ("videobench methods", [*CLI, "methods"], 2.0)]
    named = only.split("methods ", 1)[-1].split() if only and "methods " in only else None
    if only is None or "methods" in only:
        rows += [(f"videobench methods {name}", [*CLI, "methods", name], 2.0)
                 for name in (named or method_names(root))]
    rows += [("videobench suites", [*CLI, "suites"], 2.0), ("videobench metrics", [*CLI, "metrics"], 2.0),
             ("videobench weights", [*CLI, "weights"], 2.0)]
    exact = [row for row in rows if row[0] == only]
    return exact or [row for row in rows if only is None or only in row[0]]


def time_once(argv: list[str], root: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(root)}
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=root)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per command (default 5)")
    parser.add_argument("--only", default=None,
                        help="only the command with this label (e.g. 'videobench methods'), else those containing it")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to measure (default: this one)")
    args = parser.parse_args()
    root = args.root.resolve()
    rows = commands(root, args.only)
    print(f"checkout: {root}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}  ({os.cpu_count()} CPUs)")
    print(f"{'command':42s} {'median s':>9s} {'min s':>7s} {'max s':>7s} {'target s':>9s}  ok")
    failures = 0
    for label, argv, target in rows:
        times = [time_once(argv, root) for _ in range(args.runs)]
        median = statistics.median(times)
        failures += median >= target
        print(f"{label:42s} {median:9.2f} {min(times):7.2f} {max(times):7.2f} {target:9.1f}  "
              f"{'yes' if median < target else 'NO'}", flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{len(rows) - failures}/{len(rows)} commands under target")


if __name__ == "__main__":
    main()
