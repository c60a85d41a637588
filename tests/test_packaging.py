"""The runtime stays slim: three dependencies, and importing it pulls in nothing heavier."""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_runtime_declares_only_numpy_onnxruntime_pillow() -> None:
    meta = tomllib.loads((ROOT / "runtime" / "pyproject.toml").read_text())["project"]
    names = sorted(dep.split(">")[0].split("<")[0].split("=")[0].strip() for dep in meta["dependencies"])
    assert names == ["numpy", "onnxruntime", "pillow"]


def test_importing_the_runtime_loads_no_pipeline_code() -> None:
    code = (
        "import sys, cutq_runtime, cutq_runtime.cli, cutq_runtime.batch;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'onnx','typer','rich','cutq','torch','scipy'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.slow
def test_runtime_installs_into_an_empty_venv_with_nothing_extra(tmp_path: Path) -> None:
    """`pip install ./runtime` brings numpy, onnxruntime, pillow and only what those need themselves."""
    source = shutil.copytree(ROOT / "runtime", tmp_path / "runtime", ignore=shutil.ignore_patterns("*.egg-info", "build"))
    venv.create(tmp_path / "env", with_pip=True)
    python = tmp_path / "env" / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "--quiet", str(source)], check=True, capture_output=True)
    frozen = subprocess.run([python, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True, check=True)
    installed = {line.split("==")[0].lower() for line in frozen.stdout.split()}
    onnxruntime_needs = {"coloredlogs", "humanfriendly", "flatbuffers", "packaging", "protobuf", "sympy", "mpmath"}
    extra = installed - {"cutq-runtime", "numpy", "onnxruntime", "pillow", "pip", "setuptools"} - onnxruntime_needs
    assert extra == set(), f"unexpected packages: {extra}"
    assert subprocess.run([python, "-c", "import cutq_runtime"], check=False).returncode == 0
