"""Every ``videobench ...`` and ``customvideox ...`` command written in README.md and docs/ is one the CLI accepts.

Commands are read from fenced code blocks (continuation lines joined, comments dropped, ``&&``/``|``/``;`` split)
and from inline code spans in the prose. Each is checked against the click commands themselves: the subcommand
exists, every flag is one of its options, required options are given, choices are valid, the number of arguments
fits, and a ``--method`` / ``--metrics`` / ``-M FAMILY.KEY`` / ``-o KEY`` names something registered. Placeholders
(``RESULTS``, ``<suite>``, ``...``) stand for any value. A stale example fails here, not in a user's terminal.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
PROGRAMS = ("videobench", "customvideox")
FENCE = re.compile(r"^```(\w*)\s*$")
INLINE = re.compile(r"`((?:videobench|customvideox) [^`]+)`")
#: A placeholder: upper-case words, <angle> words, '...', and shell variables.
PLACEHOLDER = re.compile(r"^(\.\.\.|[A-Z][A-Z0-9_./-]*|.*<[^>]+>.*|.*\$\w+.*|.*\|.*)$")


@dataclass(frozen=True)
class DocCommand:
    where: str
    text: str
    complete: bool = True  # a code block's command line; inline code in prose may name a command in passing

    def __str__(self) -> str:
        return f"{self.where}: {self.text}"


def _shell_lines(block: list[str]) -> list[str]:
    joined: list[str] = []
    current = ""
    for line in block:
        stripped = line.rstrip()
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        joined.append(current + stripped)
        current = ""
    if current:
        joined.append(current)
    return joined


def _commands_in(text: str) -> list[str]:
    """The program invocations in one shell line (comments dropped; ``&&``, ``||``, ``;``, ``|`` split)."""
    code = re.sub(r"(^|\s)#.*$", "", text)
    found = []
    for part in re.split(r"&&|\|\||;|\|(?!\S*\|)", code):
        part = part.strip().lstrip("(").strip()
        part = re.sub(r"^(\w+=\S*\s+)+", "", part)  # VAR=value prefixes
        part = re.sub(r"^(for .* in .*|do|then)\s+", "", part)
        if part.split(" ", 1)[0] in PROGRAMS and len(part.split()) > 1:
            found.append(part)
    return found


def doc_commands() -> list[DocCommand]:
    commands: list[DocCommand] = []
    for path in DOCS:
        name = path.relative_to(REPO).as_posix()
        lines = path.read_text(encoding="utf-8").splitlines()
        in_block, language, block, start = False, "", [], 0
        for number, line in enumerate(lines, start=1):
            fence = FENCE.match(line.strip())
            if fence:
                if in_block:
                    if language in ("", "bash", "sh", "shell", "console"):
                        for shell_line in _shell_lines(block):
                            commands += [DocCommand(f"{name}:{start}", c) for c in _commands_in(shell_line)]
                    in_block, block = False, []
                else:
                    in_block, language, start = True, fence.group(1), number
                continue
            if in_block:
                block.append(line)
            else:
                commands += [DocCommand(f"{name}:{number}", m.group(1), complete=False)
                             for m in INLINE.finditer(line)]
    return commands


def _is_placeholder(token: str) -> bool:
    return bool(PLACEHOLDER.match(token))


def _root(program: str) -> click.Command:
    if program == "videobench":
        from videobench.cli import main
    else:
        from customvideox.cli import main
    return main


def _resolve(tokens: list[str]) -> tuple[click.Command, list[str], list[str]]:
    """Walk the groups: (the leaf command, its path, its remaining tokens)."""
    command = _root(tokens[0])
    path = [tokens[0]]
    rest = tokens[1:]
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        if _is_placeholder(rest[0]) and "|" in rest[0]:
            break
        sub = command.get_command(click.Context(command), rest[0])
        if sub is None:
            raise AssertionError(f"unknown subcommand {' '.join(path)} {rest[0]!r}")
        command, path, rest = sub, path + [rest[0]], rest[1:]
    return command, path, rest


def _check_registered(command_path: list[str], values: dict[str, list[str]]) -> list[str]:
    problems = []
    from videobench.methods import available_methods
    from videobench.metrics.registry import expand_columns, metric_families

    methods = available_methods() if command_path[0] == "videobench" else {}
    for method in values.get("method", []) if command_path[0] == "videobench" else []:
        if not _is_placeholder(method) and method not in methods:
            problems.append(f"unknown method {method!r}")
    for metrics in values.get("metrics", []):
        if not _is_placeholder(metrics):
            try:
                expand_columns([item for item in metrics.split(",") if item])
            except (KeyError, ValueError) as error:
                problems.append(f"--metrics {metrics}: {error}")
    for item in values.get("metric_options", []):
        family = item.split(".", 1)[0]
        if not _is_placeholder(family) and family not in metric_families():
            problems.append(f"-M {item}: unknown metric family {family!r}")
    chosen = [m for m in values.get("method", []) if m in methods]
    if len(chosen) == 1 and command_path[1:] == ["generate"]:
        known = {info.name for info in methods[chosen[0]].describe_options()}
        for item in values.get("method_options", []):
            key = item.split("=", 1)[0]
            if not _is_placeholder(key) and key not in known:
                problems.append(f"-o {item}: {chosen[0]} has no option {key!r}")
    return problems


def check_command(text: str, complete: bool = True) -> list[str]:
    """The problems of one documented command line (empty when the CLI accepts it).

    ``complete=False`` (a command named in prose): its subcommand, flags and values are checked, not that every
    required option is there.
    """
    tokens = [token for token in shlex.split(text) if token not in ("\\",)]
    if "..." in tokens:
        tokens = tokens[: tokens.index("...")] + ["--help-placeholder-rest"]
    try:
        command, path, rest = _resolve(tokens)
    except AssertionError as error:
        return [str(error)]
    if "--help" in rest:
        return []
    truncated = not complete or (rest and rest[-1] == "--help-placeholder-rest")
    rest = [token for token in rest if token != "--help-placeholder-rest"]
    ctx = click.Context(command, info_name=path[-1], resilient_parsing=False)
    parser = command.make_parser(ctx)
    try:
        parsed, args, _ = parser.parse_args(list(rest))
    except click.UsageError as error:
        return [f"{' '.join(path)}: {error.format_message()}"]
    problems = []
    values: dict[str, list[str]] = {}
    for param in command.params:
        value = parsed.get(param.name)
        if value is None:
            if param.required and not truncated and isinstance(param, click.Option):
                problems.append(f"{' '.join(path)}: missing required option {param.opts[0]}")
            continue
        items = value if isinstance(value, (list, tuple)) else [value]
        values[param.name] = [str(item) for item in items]
        if isinstance(param.type, click.Choice):
            for item in items:
                if not _is_placeholder(str(item)) and item not in param.type.choices:
                    problems.append(f"{param.opts[0]} {item!r}: not one of {', '.join(param.type.choices)}")
    arguments = [param for param in command.params if isinstance(param, click.Argument)]
    if not arguments and args:
        problems.append(f"{' '.join(path)}: unexpected argument(s) {' '.join(args)}")
    if isinstance(command, click.Group) and not path[1:] and complete:
        problems.append("no subcommand")
    return problems + _check_registered(path, values)


def test_the_docs_hold_commands():
    assert len(doc_commands()) > 40


@pytest.mark.parametrize("command", doc_commands(), ids=str)
def test_documented_command_is_accepted_by_the_cli(command):
    assert check_command(command.text, command.complete) == [], str(command)


@pytest.mark.parametrize("text, expected", [
    ("videobench generate --lora x.safetensors --method customvideox --out r", "No such option '--lora'"),
    ("videobench generate --method customvideox", "missing required option --out"),
    ("videobench generate --method no-such-method --out r", "unknown method 'no-such-method'"),
    ("videobench frobnicate", "unknown subcommand"),
    ("videobench score r --metrics no_such_metric", "--metrics no_such_metric"),
    ("videobench generate --method customvideox --out r -o no_such_key=1", "has no option 'no_such_key'"),
    ("videobench generate --method customvideox --out r --dtype fp8", "'fp8'"),
])
def test_the_checker_catches_stale_commands(text, expected):
    problems = check_command(text)
    assert any(expected in problem for problem in problems), problems
