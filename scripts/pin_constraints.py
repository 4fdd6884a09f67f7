"""Write ``constraints.txt``: the exact version of every package the project installs, as installed here.

CI installs with these pins (``pip install -e ".[test]" -c constraints.txt``), so the versions a result was tested
with are the versions a user installs to reproduce it. Run it after changing dependencies, in an environment made
by that same command without ``-c`` (so that pip resolved fresh versions), then run the tests and commit both::

    python scripts/pin_constraints.py            # writes constraints.txt
    python scripts/pin_constraints.py --check    # exit 1 when the installed versions differ from the file

The closure is walked from the project's own requirements (extras named in ``--extras``) through each installed
distribution's ``Requires-Dist``, with environment markers evaluated for this interpreter and platform; packages
merely present in the environment are not pinned.
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import UndefinedEnvironmentName
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT = "videobench-customvideox"
DEFAULT_FILE = Path(__file__).resolve().parents[1] / "constraints.txt"
HEADER = """\
# The exact versions CI tests with (python {python}, {platform}); written by scripts/pin_constraints.py.
# Install them: pip install -e ".[test]" -c constraints.txt
"""


def _wanted(requirement: Requirement, extras: set[str]) -> bool:
    if requirement.marker is None:
        return True
    for extra in extras or {""}:
        try:
            if requirement.marker.evaluate({"extra": extra}):
                return True
        except UndefinedEnvironmentName:
            continue
    return False


def closure(root: str = PROJECT, extras: tuple[str, ...] = ("test",)) -> dict[str, str]:
    """``{canonical name: installed version}`` of every distribution ``root[extras]`` needs (``root`` excluded)."""
    pins: dict[str, str] = {}
    stack: list[tuple[str, set[str]]] = [(root, set(extras))]
    seen: set[tuple[str, frozenset[str]]] = set()
    while stack:
        name, wanted_extras = stack.pop()
        key = (canonicalize_name(name), frozenset(wanted_extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"{name} is required but not installed; install the project first") from None
        if canonicalize_name(name) != canonicalize_name(root):
            pins[canonicalize_name(dist.metadata["Name"])] = dist.version
        for line in dist.requires or []:
            requirement = Requirement(line)
            if _wanted(requirement, wanted_extras):
                stack.append((requirement.name, set(requirement.extras)))
    return dict(sorted(pins.items()))


def render(pins: dict[str, str]) -> str:
    import platform

    header = HEADER.format(python=platform.python_version(), platform=f"{sys.platform}-{platform.machine()}")
    return header + "".join(f"{name}=={version}\n" for name, version in pins.items())


def read_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version
    return pins


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_FILE)
    parser.add_argument("--extras", default="test", help="comma-separated extras of the project to include")
    parser.add_argument("--check", action="store_true", help="compare the installed versions with --out")
    args = parser.parse_args()
    pins = closure(extras=tuple(filter(None, args.extras.split(","))))
    if args.check:
        expected = read_pins(args.out)
        differ = {name: (expected.get(name), pins.get(name)) for name in set(expected) | set(pins)
                  if expected.get(name) != pins.get(name)}
        for name, (want, have) in sorted(differ.items()):
            print(f"{name}: constraints {want}, installed {have}")
        return 1 if differ else 0
    args.out.write_text(render(pins))
    print(f"{len(pins)} pins -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
