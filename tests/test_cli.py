"""The two command lines, run as users run them: real processes, real files, real models."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from .conftest import CALIBRATION
from .test_bad_input import BAD, write_bad_files

BIN = Path(sys.executable).parent
CLIS = {"cutq": [str(BIN / "cutq")], "runtime": [sys.executable, "-m", "cutq_runtime"]}


def run(cli: str, *args: str, stdin: bytes | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLIS[cli], *args], input=stdin, capture_output=True, cwd=cwd, check=False,
                          env={**os.environ, "COLUMNS": "200"})


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("chelsea.png", "rocket.jpg"):
        shutil.copy(CALIBRATION / name, folder / name)
    return folder


@pytest.mark.parametrize("cli", list(CLIS))
def test_folder_with_bad_files_goes_on_and_fails_at_the_end(cli: str, photos: Path, tmp_path: Path, u2netp) -> None:
    write_bad_files(photos)
    out = tmp_path / "out"
    proc = run(cli, "remove", str(photos), "--out-dir", str(out), "--model", "u2netp")
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert sorted(p.name for p in out.iterdir()) == [".cutq-ledger.jsonl", "chelsea.png", "rocket.png"]
    for name, (_, reason) in BAD.items():
        assert f"{photos / name}: {reason}" in err.replace("\n", " ") or f"{name}: {reason}" in err, (name, err)
    assert f"{len(BAD)} of {len(BAD) + 2} failed" in err
    assert Image.open(out / "rocket.png").mode == "RGBA"
    # Again: the two cut-outs are kept, the bad files tried again and reported the same way, listed in --report.
    report = tmp_path / "failures.jsonl"
    again = run(cli, "remove", str(photos), "--out-dir", str(out), "--model", "u2netp", "--report", str(report))
    said = " ".join(again.stderr.decode().split())
    assert again.returncode == 1 and "0 cut-outs written" in said and "2 already done" in said
    failures = [json.loads(line) for line in report.read_text().splitlines()]
    assert sorted(Path(f["source"]).name for f in failures) == sorted(BAD) and all(f["error"] for f in failures)


def _done_lines(ledger: Path) -> list[str]:
    return [json.loads(line)["source"] for line in ledger.read_text().splitlines()
            if line.endswith("}") and json.loads(line)["status"] == "done"]


@pytest.mark.parametrize("cli", list(CLIS))
def test_a_killed_folder_run_resumes_with_every_output_exactly_once(cli: str, tmp_path: Path, u2netp) -> None:
    """SIGKILL part-way, then the same command: nothing lost, nothing partial, no input done twice."""
    photos = tmp_path / "in"
    photos.mkdir()
    source = Image.open(CALIBRATION / "astronaut.png").convert("RGB")
    for i in range(24):
        source.rotate(i * 15).resize((900, 900)).save(photos / f"p{i:02d}.jpg", quality=90)
    out = tmp_path / "out"
    command = [*CLIS[cli], "remove", str(photos), "--out-dir", str(out), "--model", "u2netp", "--workers", "2"]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ledger = out / ".cutq-ledger.jsonl"
    while not (ledger.exists() and len(_done_lines(ledger)) >= 5):
        assert first.poll() is None, "the run finished before it could be killed"
        time.sleep(0.02)
    first.kill()
    first.wait()
    done_before = set(_done_lines(ledger))
    assert 5 <= len(done_before) < 24
    second = run(cli, *command[len(CLIS[cli]):])
    assert second.returncode == 0, second.stderr.decode()
    said = " ".join(second.stderr.decode().split())
    done = _done_lines(ledger)
    assert sorted(done) == sorted(str(p) for p in photos.iterdir())  # each input committed exactly once
    assert f"{24 - len(done_before)} cut-outs written" in said and f"{len(done_before)} already done" in said
    assert sorted(p.name for p in out.iterdir()) == [".cutq-ledger.jsonl", *(f"p{i:02d}.png" for i in range(24))]
    for i in range(24):
        assert Image.open(out / f"p{i:02d}.png").size == (900, 900)  # complete, decodable PNGs


@pytest.mark.parametrize("cli", list(CLIS))
def test_stdin_to_stdout_and_options(cli: str, u2netp) -> None:
    data = (CALIBRATION / "coffee.png").read_bytes()
    proc = run(cli, "remove", "-", "-o", "-", "--model", "u2netp", "--only-mask", stdin=data)
    assert proc.returncode == 0, proc.stderr.decode()
    from io import BytesIO

    mask = Image.open(BytesIO(proc.stdout))
    assert mask.mode == "L" and mask.size == (600, 400)


def test_glob_single_output_and_bgcolor(photos: Path, tmp_path: Path, u2netp) -> None:
    out = tmp_path / "cat.png"
    proc = run("cutq", "remove", str(photos / "chel*.png"), "-o", str(out), "-m", "u2netp", "--bgcolor", "255,0,0,255")
    assert proc.returncode == 0, proc.stderr.decode()
    assert Image.open(out).getextrema()[3] == (255, 255)
    proc = run("cutq", "remove", str(photos / "*.png"), str(photos / "*.jpg"), "-o", str(out), "-m", "u2netp")
    assert proc.returncode == 2 and "use --out-dir" in proc.stderr.decode()


@pytest.mark.parametrize("cli", list(CLIS))
def test_never_overwrites_an_input(cli: str, photos: Path, u2netp) -> None:
    before = (photos / "chelsea.png").read_bytes()
    proc = run(cli, "remove", str(photos), "--out-dir", str(photos), "-m", "u2netp")
    assert proc.returncode == 2 and "would overwrite an input" in proc.stderr.decode()
    proc = run(cli, "remove", str(photos / "chelsea.png"), "-o", str(photos / "chelsea.png"), "-m", "u2netp")
    assert proc.returncode == 2
    assert (photos / "chelsea.png").read_bytes() == before
    assert sorted(p.name for p in photos.iterdir()) == ["chelsea.png", "rocket.jpg"]


def test_unwritable_output_is_reported_and_leaves_nothing(photos: Path, tmp_path: Path, u2netp) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the output folder's parent should be")
    proc = run("cutq", "remove", str(photos / "chelsea.png"), "-o", str(blocker / "out.png"), "-m", "u2netp")
    assert proc.returncode == 1 and "out.png" in proc.stderr.decode()
    assert blocker.read_text().startswith("a file")


def test_bad_bgcolor_and_unknown_model(photos: Path, tmp_path: Path) -> None:
    proc = run("cutq", "remove", str(photos / "chelsea.png"), "-o", str(tmp_path / "x.png"), "--bgcolor", "red")
    assert proc.returncode == 2 and "--bgcolor 'red'" in proc.stderr.decode()
    proc = run("cutq", "remove", str(photos / "chelsea.png"), "-o", str(tmp_path / "x.png"), "--model", "u3net")
    assert proc.returncode == 2 and "unknown model 'u3net'" in proc.stderr.decode()
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("cli", list(CLIS))
def test_models_commands(cli: str, u2netp_path: Path, tmp_path: Path) -> None:
    listing = run(cli, "models", "list").stdout.decode()
    assert "u2net" in listing and "u2netp" in listing
    assert run(cli, "models", "path", "u2netp").stdout.decode().strip() == str(u2netp_path)
    cache = tmp_path / "cache"
    proc = run(cli, "models", "import", str(u2netp_path), "--name", "mine", "--cache-dir", str(cache))
    assert proc.returncode == 0, proc.stderr.decode()
    assert "mine" in run(cli, "models", "list", "--cache-dir", str(cache)).stdout.decode()


def test_help_explains_commands() -> None:
    for cli in CLIS:
        text = run(cli, "remove", "--help").stdout.decode()
        assert "--out-dir" in text and "--only-mask" in text and "--bgcolor" in text
