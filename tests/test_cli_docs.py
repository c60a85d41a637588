"""docs/cli.md is the commands' `--help` as they are now: regenerated here and compared with the file."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
REGENERATE = "docs/cli.md is out of date with the commands' --help: run `make cli-docs` (.venv/bin/python tools/cli_docs.py)"


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cli_docs", ROOT / "tools" / "cli_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_current() -> None:
    tool = _tool()
    current = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    recorded = re.search(r"<!-- rendered with (.+) -->", current)
    assert recorded, REGENERATE
    if recorded.group(1) != tool.RENDERED_WITH:
        pytest.skip(f"docs/cli.md was rendered with {recorded.group(1)}; argparse, typer and rich lay help out "
                    f"differently under {tool.RENDERED_WITH}")
    assert tool.render() == current, REGENERATE


def test_every_command_is_in_the_reference() -> None:
    tool = _tool()
    current = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    titles = set(re.findall(r"^## `(.+)`$", current, flags=re.MULTILINE))
    expected = {" ".join(["cutq", *path]) for path in tool.cutq_paths()}
    expected |= {" ".join([tool.RUNTIME, *path]) for path in tool.runtime_paths()}
    assert {"cutq prune", "cutq quantize", "cutq models list", "python -m cutq_runtime remove"} <= expected
    assert "cutq finetune" not in expected
    assert titles == expected, REGENERATE
