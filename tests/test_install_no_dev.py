"""`pip install ./runtime .` without the dev extra gives a working `cutq`, with no rembg anywhere.

rembg is the parity reference of the tests and benchmarks, so it is a dev dependency only (it brings
scipy, scikit-image, opencv and numba). A user who installs cutq to quantize, prune or serve must never
meet an ImportError for it: not from `cutq --help`, not from importing a module, not from `cutq bench`.
The dev venv always has rembg, so only a second, fresh venv can show that: these tests install the real
declared dependency set into one (no `--no-deps`) and run the real commands there.

The venv is made without pip and filled by this interpreter's pip (`pip --python`), which saves running
ensurepip; `--no-compile` skips byte-compiling sympy and onnx up front. The install reads from the package
index pip is configured with; the whole module takes about a minute.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import venv
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import tomllib
from PIL import Image

from .conftest import CALIBRATION

ROOT = Path(__file__).resolve().parents[1]

# Every command path of both command lines, found by walking the installed apps, so a command added
# later is checked without editing this list.
LIST_COMMANDS = r"""
import argparse, json
import typer.main
from cutq.cli import app
from cutq_runtime.cli import _parser

def walk_click(command, path):
    yield path
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from walk_click(sub, [*path, name])

def walk_argparse(parser, path):
    yield path
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk_argparse(sub, [*path, name])

print(json.dumps({"cutq": list(walk_click(typer.main.get_command(app), [])),
                  "runtime": list(walk_argparse(_parser(), []))}))
"""

# Imports every module of both packages (`__main__` runs a command line, so it is left out). A module that
# needs another optional extra may refuse with a CutqError naming it (the project's rule for torch); any
# other exception, an ImportError above all, fails the script.
IMPORT_ALL = r"""
import importlib, importlib.util, json, pkgutil, sys
import cutq, cutq_runtime
from cutq_runtime.errors import CutqError
names, refused = [], {}
for package in (cutq, cutq_runtime):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if not info.name.endswith(".__main__"):
            try:
                importlib.import_module(info.name)
            except CutqError as exc:
                refused[info.name] = str(exc)
            names.append(info.name)
print(json.dumps({"modules": names, "refused": refused, "cutq_file": cutq.__file__,
                  "rembg_findable": importlib.util.find_spec("rembg") is not None,
                  "rembg_loaded": any(m.split(".")[0] == "rembg" for m in sys.modules)}))
"""


def _copy_sources(dest: Path) -> Path:
    """The files a build of both projects reads, copied so the build's `build/` and `*.egg-info` stay out of the repo."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = {config.get("package-dir", {}).get(p, p.replace(".", "/")).split("/")[0] for p in config["packages"]}
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in sorted(dirs | {"runtime"}):
        shutil.copytree(ROOT / name, dest / name, ignore=skip)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, dest / name)
    return dest


def _env(bin_dir: Path) -> dict[str, str]:
    """The fresh venv first on PATH, nothing from the dev venv, and wide output so notes are not wrapped."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}}
    return {**env, "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", "COLUMNS": "200"}


class PlainEnv:
    """A venv holding cutq and cutq-runtime with their declared dependencies and nothing else."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = root / "env" / "bin"
        self.python = self.bin / "python"

    def run(self, *argv: str | Path) -> subprocess.CompletedProcess[str]:
        # cwd outside the repo: `python -c`/`-m` put the cwd on sys.path, and the repo's cutq/ must not shadow the install
        return subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False, cwd=self.root,
                              env=_env(self.bin))

    def python_json(self, code: str) -> dict:
        proc = self.run(self.python, "-c", code)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> PlainEnv:
    root = tmp_path_factory.mktemp("no-dev")
    source = _copy_sources(root / "src")
    venv.create(root / "env", with_pip=False)
    env = PlainEnv(root)
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(env.python), "install", "--quiet",
                              "--no-compile", "./runtime", "."], cwd=source, capture_output=True, text=True, check=False)
    assert install.returncode == 0, install.stderr
    return env


def test_rembg_is_absent_and_every_module_imports(plain: PlainEnv) -> None:
    found = plain.python_json(IMPORT_ALL)
    assert not found["rembg_findable"], "rembg must not be a dependency of cutq or cutq-runtime"
    assert not found["rembg_loaded"]
    assert Path(found["cutq_file"]).is_relative_to(plain.root / "env")
    assert {"cutq.cli.bench", "cutq.benchmarks.stages", "cutq.benchmarks.e2e", "cutq.distill.finetune",
            "cutq_runtime.cli"} <= set(found["modules"])
    # only torch-only modules of the `train` extra may refuse, and only with the message naming that extra
    assert all(name.startswith("cutq.distill.") and "cutq[train]" in message for name, message in found["refused"].items()), \
        found["refused"]


def test_every_help_exits_0(plain: PlainEnv) -> None:
    found = plain.python_json(LIST_COMMANDS)
    cutq, runtime = ([" ".join(path) for path in found[cli]] for cli in ("cutq", "runtime"))
    assert {"", "bench", "remove", "quantize", "prune", "serve", "models", "models list"} <= set(cutq)
    assert "finetune" not in cutq  # Python only: cutq.distill.pipeline.run
    assert {"", "remove", "serve", "models", "models list"} <= set(runtime)
    argvs = [[plain.bin / "cutq", *path, "--help"] for path in found["cutq"]]
    argvs += [[plain.bin / "cutq-runtime", *path, "--help"] for path in found["runtime"]]
    argvs += [[plain.python, "-m", "cutq_runtime", "--help"], [plain.python, "-m", "cutq.benchmarks.e2e", "--help"]]
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # each start imports onnx and onnxruntime: ~2 s alone
        procs = list(pool.map(lambda argv: plain.run(*argv), argvs))
    failed = [f"{' '.join(map(str, p.args[1:]))} ({Path(p.args[0]).name}): {p.stderr[-500:]}" for p in procs
              if p.returncode != 0 or "usage" not in p.stdout.lower()]
    assert not failed, "\n".join(failed)


def test_bench_leaves_out_rembg_rows_with_a_note(plain: PlainEnv, u2netp_path: Path, tmp_path: Path) -> None:
    photos = tmp_path / "eval"
    (photos / "images").mkdir(parents=True)
    (photos / "masks").mkdir()
    shutil.copy(CALIBRATION / "chelsea.png", photos / "images" / "chelsea.png")
    Image.new("L", Image.open(CALIBRATION / "chelsea.png").size, 255).save(photos / "masks" / "chelsea.png")
    out = tmp_path / "bench.json"
    proc = plain.run(plain.bin / "cutq", "bench", "--model", "u2netp", "--eval-dir", photos, "--eval-count", "1",
                     "--timing-count", "1", "--runs", "1", "--warmup", "0", "--repeats", "1", "--no-pull", "--no-rss",
                     "--json", out)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert [(row["name"], row["engine"]) for row in report["variants"]] == [("u2netp", "cutq")]
    assert report["variants"][0]["e2e_vs_rembg"] is None
    note = "rembg is not installed, its rows are left out (pip install rembg to compare)"
    assert note in report["notes"]
    assert f"note: {note}" in re.sub(r"\s+", " ", proc.stderr)


def test_e2e_comparison_refuses_in_one_line_naming_the_fix(plain: PlainEnv) -> None:
    proc = plain.run(plain.python, "-m", "cutq.benchmarks.e2e", "--count", "1")
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and "pip install rembg" in proc.stderr
