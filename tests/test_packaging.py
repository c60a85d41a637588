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
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'onnx','typer','rich','cutq','torch','scipy','fastapi','uvicorn','starlette','pydantic'}))"
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
    # Without the extra, `serve` says what to install instead of a traceback.
    refused = subprocess.run([python, "-m", "cutq_runtime", "serve", "--model", "u2netp"], capture_output=True, text=True)
    assert refused.returncode == 2 and 'pip install "cutq-runtime[serve]"' in refused.stderr

    # The serve extra adds the web stack and nothing heavy: pure-Python packages plus pydantic's core.
    subprocess.run([python, "-m", "pip", "install", "--quiet", f"{source}[serve]"], check=True, capture_output=True)
    frozen = subprocess.run([python, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True, check=True)
    served = {line.split("==")[0].lower().replace("_", "-") for line in frozen.stdout.split()} - installed
    web_stack = {"fastapi", "starlette", "pydantic", "pydantic-core", "annotated-types", "annotated-doc", "typing-extensions",
                 "typing-inspection", "anyio", "idna", "sniffio", "exceptiongroup", "uvicorn", "click", "h11",
                 "python-multipart", "opentelemetry-api", "importlib-metadata", "zipp"}
    assert {"fastapi", "uvicorn", "python-multipart"} <= served <= web_stack, served - web_stack
    helped = subprocess.run([python, "-m", "cutq_runtime", "serve", "--help"], capture_output=True, text=True, check=True)
    assert "--max-concurrency" in helped.stdout
