"""Pipeline steps that exist so far: opset upgrade and the calibration image set."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from cutq.quantize import calibration_set
from cutq.quantize.opset import OpsetConfig, default_opset, upgrade_opset
from cutq_runtime.errors import CutqError
from cutq_runtime.registry import InputSpec

from .conftest import CALIBRATION
from .tiny import save_tiny


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_opset_upgrade_of_u2netp_keeps_its_outputs(u2netp_path: Path) -> None:
    model = onnx.load(u2netp_path)
    assert default_opset(model) == 11
    upgraded, report = upgrade_opset(model, OpsetConfig(target=13))
    assert (report.from_version, report.to_version, report.changed) == (11, 13, True)
    assert default_opset(upgraded) == 13
    x = np.random.default_rng(0).standard_normal((1, 3, 320, 320)).astype(np.float32)
    assert np.abs(_run(upgraded, x) - _run(model, x)).max() < 1e-5
    same, report = upgrade_opset(upgraded, OpsetConfig(target=13))
    assert same is upgraded and not report.changed


def test_calibration_split_keeps_scenes_apart_and_is_seeded(tmp_path: Path) -> None:
    names = [f"{seq}_{frame:05d}.jpg" for seq in ("cat", "dog", "owl", "bmx-trees") for frame in (0, 10, 20)]
    paths = [tmp_path / n for n in names]
    calib, verify = calibration_set.split_by_sequence(paths, verify_fraction=0.5, seed=3)
    assert {calibration_set.sequence_of(p) for p in calib}.isdisjoint({calibration_set.sequence_of(p) for p in verify})
    assert sorted(calib + verify) == sorted(paths) and calib and verify
    assert calibration_set.split_by_sequence(paths, 0.5, seed=3) == (calib, verify)
    assert calibration_set.sample(paths, 4, seed=1) == calibration_set.sample(paths, 4, seed=1)
    with pytest.raises(CutqError, match="at least two scenes"):
        calibration_set.split_by_sequence(paths[:3])


def test_load_uses_runtime_preprocessing_and_names_skipped_files(tmp_path: Path) -> None:
    for name in ("chelsea.png", "coffee.png"):
        shutil.copy(CALIBRATION / name, tmp_path / name)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    paths = calibration_set.list_images(tmp_path)
    loaded = calibration_set.load(paths, InputSpec(), minimum=2)
    assert [p.name for p in loaded.paths] == ["chelsea.png", "coffee.png"]
    assert loaded.skipped and "broken.jpg" in loaded.skipped[0]
    assert loaded.tensors[0].shape == (1, 3, 320, 320) and loaded.tensors[0].dtype == np.float32
    assert len(loaded.fingerprint) == 64
    # one calibration record for the photos of every step, each listed once
    assert calibration_set.calibration_record(tmp_path, 4, loaded.paths[1:], loaded.paths) == {
        "folder": str(tmp_path.resolve()), "seed": 4, "images": ["chelsea.png", "coffee.png"], "fingerprint": loaded.fingerprint}
    with pytest.raises(CutqError, match=r"only 2 readable image\(s\), need at least 3"):
        calibration_set.load(paths, InputSpec(), minimum=3)


def test_missing_or_empty_calibration_folder(tmp_path: Path) -> None:
    with pytest.raises(CutqError, match="no such folder"):
        calibration_set.list_images(tmp_path / "absent")
    with pytest.raises(CutqError, match="no images found"):
        calibration_set.list_images(tmp_path)
    save_tiny(tmp_path / "tiny.onnx")  # not an image either
    with pytest.raises(CutqError, match="no images found"):
        calibration_set.list_images(tmp_path)
