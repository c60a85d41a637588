"""`cutq prune` end to end: the pipeline on a tiny model (bytes, manifest, determinism), the command line as a
real process (bad input writes nothing), and the real u2netp through the command."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from cutq.prune.lowrank import LowRankConfig
from cutq.prune.pipeline import PruneJob, default_name, run
from cutq.prune.pruner import PruneConfig
from cutq.prune.reconstruct import ReconstructConfig
from cutq_runtime.errors import CutqError

from .conftest import CALIBRATION
from .tiny import residual_concat_model, save_tiny


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "cutq"), "prune", *args], capture_output=True, text=True,
                          check=False, env={**os.environ, "COLUMNS": "200"})


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.onnx"
    onnx.save(residual_concat_model(), path)
    return path


def test_pipeline_writes_a_reproducible_variant(tiny: Path, tmp_path: Path) -> None:
    outs = [tmp_path / "a" / "tiny-p50.onnx", tmp_path / "b" / "tiny-p50.onnx"]
    results = [run(PruneJob(model=str(tiny), prune=PruneConfig(0.5, multiple=2, min_channels=1), out=out, calib_dir=CALIBRATION,
                            reconstruction=ReconstructConfig(samples=128))) for out in outs]
    assert outs[0].read_bytes() == outs[1].read_bytes()
    result = results[0]
    assert result.pruned.params < result.source.params and result.pruned.macs < result.source.macs
    assert result.pruned.params <= 0.5 * result.source.params  # the ratio counts parameters
    assert result.channels_after > 0.5 * result.channels_before  # which fall faster than the channels
    manifest = json.loads(outs[0].with_suffix(".json").read_text())
    assert manifest["steps"][0]["channel_fraction"] == result.channel_fraction
    assert [s["step"] for s in manifest["steps"]] == ["prune", "lowrank", "reconstruct", "late_upsample", "finetune"]
    assert manifest["steps"][1]["enabled"] is False  # no Conv of the tiny model is big enough to factor
    assert manifest["steps"][0]["ratio"] == 0.5 and manifest["steps"][2]["convs"] == 4
    assert manifest["schema_version"] == 1 and set(manifest["calibration"]) == {"folder", "seed", "images", "fingerprint"}
    assert manifest["calibration"]["folder"] == str(CALIBRATION.resolve()) and manifest["calibration"]["images"]
    assert set(manifest["calibration"]["images"]).isdisjoint(manifest["verification"]["images"])
    assert outs[0].with_suffix(".ort").is_file() and 0 < result.fidelity.ssim_mean <= 1


def test_default_name() -> None:
    assert default_name("u2net", 0.5) == "u2net-p50" and default_name("u2netp", 0.3) == "u2netp-p30"
    assert default_name("u2net", 0.5, "fast") == "u2net-p50-fast"


def test_bad_input_is_a_clear_error_and_writes_nothing(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.onnx"
    for ratio, shown in (("0", "got 0.0"), ("0.95", "got 0.95"), ("-0.2", "got -0.2")):
        proc = _cli("--model", str(tiny), "--ratio", ratio, "--out", str(out), "--calib-dir", str(CALIBRATION))
        assert proc.returncode == 2 and "--ratio must be in (0, 0.9]" in proc.stderr and shown in proc.stderr
    proc = _cli("--model", str(save_tiny(tmp_path / "two.onnx", u2net_like=False)), "--ratio", "0.5", "--out", str(out))
    assert proc.returncode == 2 and "not a U²-Net-like model" in proc.stderr
    odd = tmp_path / "odd.onnx"
    onnx.save(residual_concat_model(extra_op="Neg"), odd)
    proc = _cli("--model", str(odd), "--ratio", "0.5", "--out", str(out))
    assert proc.returncode == 2 and "Neg node 'odd': cannot trace channels through this op" in proc.stderr
    for removed in (["--criterion", "l1"], ["--factor-method", "output"], ["--no-factor"], ["--narrow-share", "1.5"],
                    ["--lowrank-photos", "8"], ["--finetune-epochs", "1"]):  # docs/design/removed-options.md
        proc = _cli("--model", str(tiny), "--ratio", "0.5", *removed, "--out", str(out))
        assert proc.returncode == 2 and "No such option" in proc.stderr and removed[0] in proc.stderr, removed
    for recipe in (["--recipe", "fast"], ["--fast"]):  # another recipe's flags would change what its cached name means
        for flag in (["--whole-below", "33"], ["--late-upsample"], ["--spare", "80:64"], ["--keep-narrow", "80:64"]):
            proc = _cli("--model", str(tiny), "--ratio", "0.5", *recipe, *flag, "--out", str(out))
            assert proc.returncode == 2 and "--recipe fast sets --narrow-fraction, --channel-multiple, --whole-below" in (
                proc.stderr), (recipe, flag)
    for flags in (["--recipe", "fast"], ["--fast"], ["--narrow-fraction", "0.3"], ["--whole-below", "65"],
                  ["--spare", "80:64"], ["--keep-narrow", "80:64"]):
        proc = _cli("--model", str(tiny), "--ratio", "0.5", *flags, "--out", str(out))
        assert proc.returncode == 2 and "no Conv of 500,000 weights or more to factor" in proc.stderr, flags
        assert "--narrow-fraction, --whole-below, --spare and the fast recipe do not apply" in proc.stderr, flags
    for flags, shown in ((["--spare", "80"], "--spare takes SIZE:CHANNELS, such as 80:64, not '80'"),
                         (["--keep-narrow", "80"], "--spare takes SIZE:CHANNELS, such as 80:64, not '80'"),
                         (["--recipe", "slow"], "'slow' is not one of"),
                         (["--narrow-fraction", "1"], "--narrow-fraction must be in [0, 1), got 1.0"),
                         (["--calib-count", "1"], "--calib-count must be >= 2"),
                         (["--samples", "0"], "--samples must be >= 1")):
        proc = _cli("--model", str(tiny), "--ratio", "0.5", *flags, "--out", str(out))
        assert proc.returncode == 2 and shown in proc.stderr, (flags, proc.stderr)
    # From Python, where the settings the command line no longer offers stay reachable:
    with pytest.raises(CutqError, match="`spare` needs the factoring"):
        run(PruneJob(model=str(tiny), prune=PruneConfig(0.5, spare=((80, 64),)), lowrank=None, out=out))
    with pytest.raises(CutqError, match="factoring method must be one of separable, output, got 'spatial'"):
        LowRankConfig(method="spatial")
    before = tiny.read_bytes()
    proc = _cli("--model", str(tiny), "--ratio", "0.5", "--out", str(tiny))
    assert proc.returncode == 2 and "refusing to overwrite" in proc.stderr and tiny.read_bytes() == before
    assert not list(tmp_path.glob("o.*")) and not list(tmp_path.glob(".*"))


def test_too_few_calibration_photos_are_warned_about(tiny: Path, tmp_path: Path, davis: Path) -> None:
    warning = "the refit had 2 calibration photos (16 asked for)"
    small = ("--model", str(tiny), "--ratio", "0.5", "--min-channels", "1", "--channel-multiple", "2")
    few = _cli(*small, "--out", str(tmp_path / "few.onnx"), "--calib-dir", str(CALIBRATION))
    shown = " ".join(few.stderr.split())  # rich wraps the message
    assert few.returncode == 0 and warning in shown and "--calib-dir a folder of 16 or more" in shown, few.stderr
    enough = _cli(*small, "--out", str(tmp_path / "enough.onnx"), "--calib-dir", str(davis))
    assert enough.returncode == 0, enough.stderr
    assert "warning" not in enough.stderr and (tmp_path / "enough.onnx").is_file()


def test_u2netp_through_the_command(u2netp_path: Path, tmp_path: Path) -> None:
    proc = _cli("--model", str(u2netp_path), "--ratio", "0.5", "--no-reconstruct", "--late-upsample", "--calib-dir",
                str(CALIBRATION), "--verify-count", "2", "--cache-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "u2netp-p50.onnx"
    assert out.is_file() and out.with_suffix(".ort").is_file() and out.stat().st_size < 0.52 * u2netp_path.stat().st_size
    assert "params" in proc.stdout and "mask SSIM vs unpruned on 2 held-out photos" in proc.stdout
    assert re.search(r"late upsampling: [1-3] decoder Convs, [0-9.]+ GMAC saved", proc.stdout)  # of 575, 680, 810
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["steps"][2] == {**manifest["steps"][2], "step": "reconstruct", "enabled": False}
    assert manifest["steps"][3]["step"] == "late_upsample" and manifest["steps"][3]["enabled"]
    prune = manifest["steps"][0]
    assert prune["min_channels"] == 16 and min(len(kept) for kept in prune["kept"].values()) == 16
    listed = subprocess.run([str(Path(sys.executable).parent / "cutq"), "models", "list", "--cache-dir", str(tmp_path)],
                            capture_output=True, text=True, check=False, env={**os.environ, "COLUMNS": "200"})
    assert "u2netp-p50" in listed.stdout


def test_finetune_epochs_distil_the_pruned_model(tiny: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    plain, tuned = tmp_path / "plain" / "tiny-p50.onnx", tmp_path / "tuned" / "tiny-p50.onnx"
    job = dict(model=str(tiny), prune=PruneConfig(0.5, multiple=2, min_channels=1), calib_dir=CALIBRATION,
               reconstruction=ReconstructConfig(samples=128))
    run(PruneJob(**job, out=plain))
    run(PruneJob(**job, out=tuned, finetune_epochs=1))
    manifest = json.loads(tuned.with_suffix(".json").read_text())
    steps = {s["step"]: s for s in manifest["steps"]}
    assert steps["finetune"]["epochs"] == 1 and len(steps["finetune"]["epoch_losses"]) == 1
    # The better of the two models on the held-out photos is written; the manifest records the other's figure.
    assert steps["finetune"]["kept"] == (plain.read_bytes() != tuned.read_bytes())
    assert manifest["verification"]["ssim_mean"] >= steps["finetune"]["other_ssim_mean"]
    assert not tuned.with_suffix(".ckpt").exists()  # finished: no checkpoint left behind


def test_help_fits_a_screen_and_leads_with_the_recipes() -> None:
    shown = subprocess.run([str(Path(sys.executable).parent / "cutq"), "prune", "--help"], capture_output=True, text=True,
                           check=True, env={**os.environ, "COLUMNS": "100", "TERM": "dumb", "NO_COLOR": "1"}).stdout
    assert len(shown.splitlines()) <= 40
    assert "--recipe" in shown and "fast" in shown and "--spare" in shown
    assert "--fast" not in shown and "--keep-narrow" not in shown  # old spellings still work, unlisted
