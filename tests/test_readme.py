"""Every command the README and the docs show runs as written: a newcomer copies them, so a renamed option or a
removed target must fail here, not on their terminal.

The shell blocks (```sh, and unlabelled ones) of README.md, docs/*.md, benchmarks/README.md and runtime/README.md
are read line by line. A line (or, after `|`, the part of a pipeline) that calls `cutq`, `python -m cutq_runtime`,
`cutq-runtime` or `make` is checked against the real thing without doing its work: the `cutq` line is parsed by
the click command typer builds from `cutq.cli.app`, the runtime line by `cutq_runtime.cli._parser()`, the `serve`
commands of both by the server's own argparse options, and a `make` line must name targets of the Makefile and
variables it uses. Parsing catches unknown subcommands and options, missing or malformed values and out-of-range
numbers; it does not check that the files exist. Other commands (curl, pip, pytest) are not cutq's to check.

docs/experiments.md and docs/design/ are skipped: they quote commands as they were when measured, with options
removed since (docs/design/removed-options.md lists them).

The cheap commands also run for real, as separate processes: `models list` and `models path` (of u2netp, for any
name: variants exist only after `make quantize`), and one README `cutq remove` of a bundled photo with u2netp into
a temporary folder. Downloads, quantizing, pruning, serving and folder runs are parse-checked only.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import typer
import typer.main
from PIL import Image
from typer.core import TyperGroup

try:  # typer vendors click since 0.2x (typer._click); its usage errors derive from TyperException
    from typer.exceptions import TyperException as UsageProblem
except ImportError:  # older typer runs on click itself
    from click import ClickException as UsageProblem

from .conftest import CALIBRATION

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SKIPPED = {"docs/experiments.md"}  # and docs/design/, which the glob below does not reach
DOCS = [name for name in ["README.md", "runtime/README.md", "benchmarks/README.md",
                           *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))]
        if name not in SKIPPED]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
SHELL_FENCES = {"sh", "bash", "shell", "console", ""}
# What the docs' placeholders stand for when a command runs for real.
PHOTO_PLACEHOLDERS = {"photo.jpg": CALIBRATION / "rocket.jpg"}


@dataclass(frozen=True)
class Command:
    """One call of a cutq tool in a doc: which tool, its arguments, and where it is written."""

    where: str  # "README.md:47"
    tool: str  # "cutq", "runtime", "make", or "shell" for a line the shell cannot split
    args: tuple[str, ...]
    text: str


def _shell_lines(name: str) -> list[tuple[int, str]]:
    """(line number, logical line) of every shell block in a doc, `\\`-continued lines joined, prompts dropped."""
    text = (ROOT / name).read_text(encoding="utf-8")
    lines = []
    for block in FENCE.finditer(text):
        if block.group(1) not in SHELL_FENCES:
            continue
        first = text.count("\n", 0, block.start(2)) + 1
        pending, start = "", 0
        for offset, line in enumerate(block.group(2).splitlines()):
            if not pending:
                start = first + offset
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            lines.append((start, (pending + line).strip().removeprefix("$ ")))
            pending = ""
    return lines


def _calls(line: str) -> list[list[str]]:
    """The simple commands of a shell line: split at pipes and `;`/`&&`/`||`, without redirections or comments."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    calls, words = [], []
    for token in lexer:
        if token in {"|", "||", "&&", ";", "&"}:
            calls.append(words)
            words = []
        else:
            words.append(token)
    calls.append(words)
    simple = []
    for words in calls:
        redirect = next((i for i, w in enumerate(words) if set(w) <= set("<>&")), len(words))
        if redirect < len(words) and redirect > 0 and words[redirect - 1].isdigit():  # 2>&1
            redirect -= 1
        simple.append(words[:redirect])
    return simple


def _classify(words: list[str]) -> tuple[str, list[str]] | None:
    """Which of our tools a command calls, and its arguments; None for anyone else's."""
    if not words:
        return None
    program = words[0].removeprefix(".venv/bin/")
    if program == "cutq":
        return "cutq", words[1:]
    if program == "cutq-runtime":
        return "runtime", words[1:]
    if program in {"python", "python3"} and words[1:3] == ["-m", "cutq_runtime"]:
        return "runtime", words[3:]
    if program == "make":
        return "make", words[1:]
    return None


def commands(name: str) -> list[Command]:
    found = []
    for number, line in _shell_lines(name):
        try:
            calls = _calls(line)
        except ValueError:  # unbalanced quotes: a diagram's or a layout's prose, unless it starts like our command
            if _classify(line.split()):
                found.append(Command(f"{name}:{number}", "shell", (), line))
            continue
        for words in calls:
            call = _classify(words)
            if call:
                found.append(Command(f"{name}:{number}", call[0], tuple(call[1]), line))
    return found


ALL = [command for name in DOCS for command in commands(name)]


@functools.cache
def _cutq() -> TyperGroup:
    """The click command typer builds from `cutq.cli.app`: the same parser `cutq` runs."""
    from cutq.cli import app

    command = typer.main.get_command(app)
    assert isinstance(command, TyperGroup)
    return command


def _serve_parser(prog: str) -> argparse.ArgumentParser:
    """The parser `cutq serve` and `python -m cutq_runtime serve` hand their arguments to (cutq_runtime.serve.main)."""
    from cutq_runtime.serve import add_arguments

    parser = argparse.ArgumentParser(prog=prog)
    add_arguments(parser)
    return parser


def _argparse_problem(parser: argparse.ArgumentParser, args: list[str]) -> str | None:
    """argparse reports by printing and exiting: keep the message, and treat --help (exit 0) as accepted."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(args)
    except SystemExit as exc:
        return stderr.getvalue().strip().splitlines()[-1] if exc.code else None
    return None


def _cutq_parse(args: list[str]):
    """Walk the typer groups to the command, then let click parse its options into a context; nothing is invoked."""
    command, name, parent = _cutq(), "cutq", None
    while isinstance(command, TyperGroup):
        # No cutq group has options of its own (only --help), so the first word is the subcommand.
        if args[:1] == ["--help"]:
            raise typer.Exit(0)
        if not args or args[0].startswith("-"):
            raise UsageProblem(f"`{name}` needs a subcommand: {', '.join(sorted(command.commands))}")
        parent = command.make_context(name, args[:1], parent=parent, resilient_parsing=False)
        sub_name, command, args = command.resolve_command(parent, list(args))
        name = sub_name or name
    return command.make_context(name, list(args), parent=parent, resilient_parsing=False)


def _cutq_problem(args: list[str]) -> str | None:
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # what --help prints
            context = _cutq_parse(args)
    except typer.Exit as exc:  # --help
        return None if exc.exit_code == 0 else f"exit {exc.exit_code}"
    except UsageProblem as exc:
        return exc.format_message()
    if context.info_name == "serve":  # it takes any arguments and hands them to the server's parser
        return _argparse_problem(_serve_parser("cutq serve"), context.args)
    return None


def _runtime_problem(args: list[str]) -> str | None:
    from cutq_runtime.cli import _parser

    if args[:1] == ["serve"]:  # dispatched to the server's own parser before _parser() sees it
        return _argparse_problem(_serve_parser("python -m cutq_runtime serve"), args[1:])
    return _argparse_problem(_parser(), args)


@functools.cache
def _makefile() -> tuple[frozenset[str], frozenset[str]]:
    """The Makefile's targets and the variables it sets or reads."""
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = {t for rule in re.findall(r"^([^\s#$.][^:=#]*?)\s*::?(?!=)", text, re.MULTILINE) for t in rule.split()}
    variables = set(re.findall(r"^([A-Za-z_]\w*)\s*[:?+]?=", text, re.MULTILINE))
    variables |= set(re.findall(r"\$\(([A-Za-z_]\w*)\)", text))
    return frozenset(targets), frozenset(variables)


def _make_problem(args: list[str]) -> str | None:
    targets, variables = _makefile()
    for arg in args:
        if "=" in arg:
            name, value = arg.split("=", 1)
            if name not in variables:
                return f"the Makefile does not use the variable {name}"
            if name == "SERVE_ARGS":  # options the Makefile passes on to `cutq serve`
                found = _argparse_problem(_serve_parser("cutq serve"), shlex.split(value))
                if found:
                    return found
        elif not arg.startswith("-") and arg not in targets:
            return f"no target {arg!r} in the Makefile"
    return None


def problem(command: Command) -> str | None:
    """Why the command would not run as written (None: it parses)."""
    if command.tool == "shell":
        return "the shell cannot split it into words (unbalanced quotes)"
    check = {"cutq": _cutq_problem, "runtime": _runtime_problem, "make": _make_problem}[command.tool]
    return check(list(command.args))


def test_the_docs_show_commands_of_every_kind() -> None:
    """Guards the extraction itself: a changed fence or prefix must not leave the checks below with nothing to do."""
    readme = commands("README.md")
    assert {c.tool for c in readme} == {"cutq", "runtime", "make"}
    assert len(readme) >= 15, readme
    assert any(c.args[:2] == ("models", "list") for c in readme)
    assert any(c.tool == "runtime" for c in ALL if not c.where.startswith("README.md"))


@pytest.mark.parametrize("command", ALL, ids=[c.where for c in ALL])
def test_command_parses(command: Command) -> None:
    found = problem(command)
    assert found is None, f"{command.where}: `{command.text}` does not run as written: {found}"


@pytest.mark.parametrize(("line", "expected"), [
    ("cutq remove photo.jpg -o cut.png --no-such-option", "--no-such-option"),
    ("cutq remove photo.jpg -o cut.png --png-level 12", "--png-level"),
    ("cutq prune --model u2net --ratio", "--ratio"),
    ("cutq no-such-command", "no-such-command"),
    ("cutq models no-such-action", "no-such-action"),
    ("cutq serve --model u2netp --no-such-option", "--no-such-option"),
    ("python -m cutq_runtime remove photo.jpg -o cut.png --no-such-option", "--no-such-option"),
    ("python -m cutq_runtime serve --no-such-option", "--no-such-option"),
    (".venv/bin/python -m cutq_runtime models no-such-action", "no-such-action"),
    ("make no-such-target", "no-such-target"),
    ("make serve NO_SUCH_VARIABLE=1", "NO_SUCH_VARIABLE"),
    ("make serve SERVE_ARGS='--port 8080 --no-such-option'", "--no-such-option"),
])
def test_the_check_rejects_what_would_not_run(line: str, expected: str) -> None:
    """The parse check must be able to fail: each of these is refused, naming the culprit."""
    [words] = _calls(line)
    call = _classify(words)
    assert call is not None
    found = problem(Command("example", call[0], tuple(call[1]), line))
    assert found is not None and expected in found, found


def _run(command: Command, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """The command as a user runs it: the installed `cutq` script, or this Python with `-m cutq_runtime`."""
    program = [str(BIN / "cutq")] if command.tool == "cutq" else [sys.executable, "-m", "cutq_runtime"]
    return subprocess.run([*program, *args], capture_output=True, text=True, cwd=cwd, check=False,
                          env={**os.environ, "COLUMNS": "200"}, timeout=120)


def _cheap(command: Command) -> bool:
    return command.tool != "make" and command.args[:2] in {("models", "list"), ("models", "path")}


CHEAP = list({(c.tool, c.args): c for c in ALL if _cheap(c)}.values())


@pytest.mark.parametrize("command", CHEAP, ids=[c.where for c in CHEAP])
def test_cheap_command_runs(command: Command, u2netp_path: Path, tmp_path: Path) -> None:
    args = list(command.args)
    if args[:2] == ["models", "path"]:
        args[2] = "u2netp"
    proc = _run(command, args, tmp_path)
    assert proc.returncode == 0, f"{command.where}: `{command.text}` failed:\n{proc.stderr}"
    if args[:2] == ["models", "path"]:
        assert Path(proc.stdout.strip()) == u2netp_path
    else:
        assert "u2netp" in proc.stdout


def test_readme_cut_out_runs(u2netp_path: Path, tmp_path: Path) -> None:
    """The README's first single-photo cut-out, on a bundled photo, with u2netp (its default u2net is 176 MB)."""
    command = next(c for c in commands("README.md")
                   if c.tool == "cutq" and c.args[:1] == ("remove",) and "-o" in c.args and "-" not in c.args)
    args = list(command.args)
    out = tmp_path / "cutout.png"
    args[args.index("-o") + 1] = str(out)
    for i, arg in enumerate(args):
        if arg in PHOTO_PLACEHOLDERS:
            args[i] = str(PHOTO_PLACEHOLDERS[arg])
    assert any(str(p) in args for p in PHOTO_PLACEHOLDERS.values()), f"{command.where}: no known placeholder photo"
    model = next((i + 1 for i, arg in enumerate(args) if arg in {"-m", "--model"}), None)
    if model is None:
        args += ["-m", "u2netp"]
    else:
        args[model] = "u2netp"
    proc = _run(command, args, tmp_path)
    assert proc.returncode == 0, f"{command.where}: `{command.text}` failed:\n{proc.stderr}"
    with Image.open(out) as cut, Image.open(PHOTO_PLACEHOLDERS["photo.jpg"]) as photo:
        assert cut.mode == "RGBA" and cut.size == photo.size
        alpha = np.asarray(cut.getchannel("A"))
    assert alpha.min() < 128 < alpha.max(), "the cut-out should keep the rocket and drop some background"
