"""Manifests are checked against the shipped schema before a model loads: cutq's own pass, and every malformed
one is a one-line `ModelError` naming the file and the field, raised before ONNX Runtime sees the model."""

from __future__ import annotations

import contextlib
import copy
import json
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import onnxruntime as ort
import pytest
import tomllib

from cutq_runtime import ModelError, manifest, models, new_session
from cutq_runtime.fsutil import file_digest
from cutq_runtime.registry import InputSpec

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def sessions_created() -> Iterator[list[str]]:
    """The model of every onnxruntime `InferenceSession` constructed inside, seen through a profile hook on this
    thread (onnxruntime itself runs unchanged)."""
    seen: list[str] = []
    init = ort.InferenceSession.__init__.__code__

    def watch(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code is init:
            seen.append(str(frame.f_locals["path_or_bytes"]))

    previous = sys.getprofile()
    sys.setprofile(watch)
    try:
        yield seen
    finally:
        sys.setprofile(previous)


@pytest.fixture(scope="module")
def u2netp_sha256(u2netp_path: Path) -> str:
    return file_digest(u2netp_path, "sha256")


@pytest.fixture
def variant(tmp_path: Path, u2netp_path: Path, u2netp_sha256: str) -> tuple[Path, dict[str, Any]]:
    """A copy of u2netp in a cache folder as the variant `variant`, and a manifest like the ones cutq writes."""
    model = tmp_path / "cache" / "variant.onnx"
    model.parent.mkdir()
    shutil.copyfile(u2netp_path, model)
    good = {"name": "variant", "description": "u2netp, copied", "file": model.name, "sha256": u2netp_sha256,
            "files": {".onnx": u2netp_sha256}, "size_bytes": model.stat().st_size,
            "input": models.input_spec_dict(InputSpec()),
            "source": {"name": "u2netp", "path": str(u2netp_path), "sha256": u2netp_sha256},
            "session": {"disabled_optimizers": ["NchwcTransformer"]}, "requires": {"onnxruntime": "1.17"},
            "steps": [{"step": "copy", "anything": [1, {"goes": None}]}],
            "cpu": {"weight_range": "7bit", "max_abs_weight": 64, "exact_on": "any", "build_host": {"model": "any"},
                    "check": {"portable": True, "kernels_vs_arithmetic_ssim_min": 0.99}},
            "verification": {"images": ["a.jpg"], "fingerprint": u2netp_sha256, "ssim_min": 1.0, "reached": True},
            "from_a_newer_cutq": {"kept": "unknown top-level keys are allowed"}}
    models.write_manifest(model, good)
    return model, good


def test_the_manifests_cutq_wrote_validate(cache: Path) -> None:
    """Every variant manifest in the user's cache (written by `cutq quantize`, `prune`, `finetune`), those written
    before `schema_version` too; reading them rewrites nothing."""
    written = sorted(cache.glob("*.json"))
    if not written:
        pytest.skip(f"no variant manifests in {cache}; make one with `cutq quantize -m u2netp`")
    for path in written:
        before = path.read_bytes()
        loaded = manifest.load(path)
        assert loaded == manifest.upgrade(json.loads(before)) and loaded["schema_version"] == 1, path
        assert path.read_bytes() == before


def test_write_manifest_records_the_schema_version(variant: tuple[Path, dict[str, Any]]) -> None:
    model, good = variant
    written = json.loads(models.manifest_path(model).read_text())
    assert written == {**good, "schema_version": manifest.SCHEMA_VERSION} and manifest.SCHEMA_VERSION == 1


def test_a_newer_schema_version_is_refused_with_the_fix(variant: tuple[Path, dict[str, Any]]) -> None:
    """Refused before the schema: a version 2 manifest may well break version 1's rules, and that is not its fault."""
    model, good = variant
    path = models.manifest_path(model)
    path.write_text(json.dumps({**good, "schema_version": 2, "input": {"size": "auto"}}))
    expected = f"{path}: schema_version: 2 is newer than this cutq-runtime reads (1); upgrade cutq-runtime"
    with sessions_created() as seen, pytest.raises(ModelError, match=re.escape(expected)) as refused:
        new_session("variant", cache_dir=model.parent)
    assert seen == [] and "\n" not in str(refused.value)
    assert [info.name for info in models.list_models(model.parent) if info.kind == "variant"] == []


LEGACY_SHA = "35e8cfe00cfffc27ad86ecb4ae798ecc0ae8944c0210d1e1c59d610079fcdbf6"


@pytest.mark.parametrize(("written", "calibration"), [
    ({"steps": [{"step": "calibrate", "method": "minmax", "images": ["a_1.jpg", "b_1.jpg"], "fingerprint": LEGACY_SHA,
                 "seed": 0}]},
     {"images": ["a_1.jpg", "b_1.jpg"], "fingerprint": LEGACY_SHA, "seed": 0}),  # cutq quantize
    ({"calibration": {"images": ["a_1.jpg"], "fingerprint": LEGACY_SHA, "seed": 3},
      "steps": [{"step": "lowrank", "images": 64, "photos": []}]},
     {"images": ["a_1.jpg"], "fingerprint": LEGACY_SHA, "seed": 3}),  # cutq prune, separable factoring
    ({"calibration": {"images": ["b_1.jpg"], "fingerprint": LEGACY_SHA, "seed": 3},
      "steps": [{"step": "lowrank", "images": 64, "photos": ["a_1.jpg", "b_1.jpg"]}]},
     {"images": ["a_1.jpg", "b_1.jpg"], "seed": 3}),  # output factoring: the fingerprint covered b_1.jpg alone
    ({"steps": [{"step": "finetune", "seed": 1, "images": ["c_1.jpg"], "fingerprint": LEGACY_SHA}]},
     {"images": ["c_1.jpg"], "fingerprint": LEGACY_SHA, "seed": 1}),  # cutq finetune
    ({"steps": [{"step": "calibrate", "images": "a_1.jpg", "fingerprint": "abc"}]}, None),  # not a record cutq wrote
    ({"steps": [{"step": "copy"}]}, None),  # models import: nothing fitted
])
def test_a_manifest_without_schema_version_is_read_as_version_1(variant: tuple[Path, dict[str, Any]],
                                                                written: dict[str, Any],
                                                                calibration: dict[str, Any] | None) -> None:
    """Calibration photos recorded in a step by older cutq are found in `calibration`; the file stays as it is."""
    model, good = variant
    path = models.manifest_path(model)
    old = {**good, **written}
    path.write_text(json.dumps(old))
    before = path.read_bytes()
    loaded = models.resolve(model).manifest
    assert loaded is not None and loaded["schema_version"] == 1 and loaded["steps"] == old["steps"]
    assert loaded.get("calibration") == calibration
    assert path.read_bytes() == before


@pytest.mark.parametrize("name", ["u2netp-int8", "u2net-p50-fast"])
def test_a_variant_from_an_older_cutq_still_loads(cache: Path, tmp_path: Path, name: str) -> None:
    """A manifest from the user's cache with its model, as older cutq wrote them (quantize, prune): still served,
    its calibration photos read from where they were recorded."""
    source = cache / f"{name}.json"
    old = json.loads(source.read_text()) if source.is_file() else {}
    if "schema_version" in old or not (cache / f"{name}.onnx").is_file():
        pytest.skip(f"no manifest in {cache} written before schema_version for {name}")
    (tmp_path / f"{name}.json").write_bytes(source.read_bytes())
    (tmp_path / f"{name}.onnx").symlink_to(cache / f"{name}.onnx")
    session = new_session(name, cache_dir=tmp_path)
    assert session.model.manifest is not None and session.model.manifest["schema_version"] == 1
    calibration = session.model.manifest["calibration"]
    assert len(calibration["images"]) >= 2 and len(calibration["fingerprint"]) == 64
    assert set(calibration["images"]).isdisjoint(session.model.manifest["verification"]["images"])
    assert (tmp_path / f"{name}.json").read_bytes() == source.read_bytes()


def test_an_imported_manifest_validates(tmp_path: Path, u2netp_path: Path) -> None:
    model = models.import_model(u2netp_path, "mine", tmp_path, base="u2netp")
    loaded = manifest.load(models.manifest_path(model))
    assert loaded["source"] == {"imported_from": str(u2netp_path.resolve()), "base": "u2netp"}


def test_a_valid_manifest_loads_the_model(variant: tuple[Path, dict[str, Any]]) -> None:
    """The positive control for the refusals below: the same hook does see this session being created."""
    model, good = variant
    with sessions_created() as seen:
        session = new_session("variant", cache_dir=model.parent)
    assert seen == [str(model)] and session.model.manifest == {**good, "schema_version": 1}
    assert session.input_spec == InputSpec() and session.disabled_optimizers == ("NchwcTransformer",)


def _edited(change: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], str]:
    """A case that changes the good manifest in place and writes it out (NaN and Infinity as Python's json spells them)."""
    def make(good: dict[str, Any]) -> str:
        change(good)
        return json.dumps(good)
    return make


def _set(section: str | None, key: str, value: Any) -> Callable[[dict[str, Any]], str]:
    return _edited(lambda m: (m[section] if section else m).__setitem__(key, value))


def _input(key: str, value: Any) -> Callable[[dict[str, Any]], str]:
    return _set("input", key, value)


def _replaced(marker: str, text: str) -> Callable[[dict[str, Any]], str]:
    """JSON that `json.dumps` cannot write: the good manifest's text with `marker` replaced."""
    return lambda good: json.dumps(good).replace(marker, text, 1)


NESTED = 100_000
BAD: dict[str, tuple[Callable[[dict[str, Any]], str], str]] = {
    "size huge": (_input("size", [100_000, 100_000]), "input.size[0]: must be <= 1024 (got 100000)"),
    "size zero": (_input("size", [320, 0]), "input.size[1]: must be >= 1 (got 0)"),
    "size string": (_input("size", "320x320"), 'input.size: must be an array (got "320x320")'),
    "size one number": (_input("size", [320]), "input.size: must have exactly 2 items (got 1)"),
    "size fraction": (_input("size", [320.5, 320]), "input.size[0]: must be an integer (got 320.5)"),
    "size boolean": (_input("size", [True, 320]), "input.size[0]: must be an integer (got true)"),
    "input string": (_set(None, "input", "u2netp"), 'input: must be an object (got "u2netp")'),
    "input null": (_set(None, "input", None), "input: must be an object (got null)"),
    "input without size": (_edited(lambda m: m["input"].pop("size")), "input.size: is required"),
    "input unknown key": (_input("resample", "bilinear"), "input.resample: is not a known field"),
    "std zero": (_edited(lambda m: m["input"]["std"].__setitem__(1, 0)), "input.std[1]: must be >= 0.01 (got 0)"),
    "std tiny": (_edited(lambda m: m["input"]["std"].__setitem__(0, 1e-39)), "input.std[0]: must be >= 0.01 (got 1e-39)"),
    "std two numbers": (_input("std", [0.2, 0.2]), "input.std: must have exactly 3 items (got 2)"),
    "mean NaN": (_input("mean", [float("nan"), 0.5, 0.5]), "input.mean[0]: must be a finite number (got NaN)"),
    "std Infinity": (_input("std", [0.2, 0.2, float("inf")]), "input.std[2]: must be a finite number (got Infinity)"),
    "mean overflowing": (_replaced("0.456", "1e400"), "input.mean[1]: must be a finite number (got Infinity)"),
    "NaN anywhere": (_edited(lambda m: m["steps"][0].__setitem__("x", [float("-inf")])),
                     "steps[0].x[0]: must be a finite number (got -Infinity)"),
    "sha256 empty": (_set(None, "sha256", ""), 'sha256: must be a sha256 digest: 64 lowercase hex digits (got "")'),
    "sha256 upper case": (_edited(lambda m: m["files"].__setitem__(".onnx", m["sha256"].upper())),
                          'files[".onnx"]: must be a sha256 digest'),
    "source sha256 short": (_edited(lambda m: m["source"].__setitem__("sha256", "abc")), "source.sha256: must be a sha256"),
    "files list": (_set(None, "files", ["abc"]), "files: must be an object (got an array)"),
    "files null": (_set(None, "files", None), "files: must be an object (got null)"),
    "nested deep": (lambda good: '{"steps": ' + "[" * NESTED + "]" * NESTED + "}", "manifest nested too deeply to read"),
    "nested unclosed": (lambda good: "[" * NESTED, "manifest nested too deeply to read"),
    "2 MB": (_set(None, "description", "x" * (2 << 20)), "manifest larger than 1048576 bytes"),
    "not JSON": (lambda good: "name = 'variant'", "not a JSON manifest (Expecting value"),
    "integer of 5000 digits": (_replaced('"size_bytes": ', '"size_bytes": ' + "9" * 5000 + ", \"was\": "),
                               "not a JSON manifest (an integer of 5000 digits)"),
    "top level array": (lambda good: json.dumps([good]), "top level: must be an object (got an array)"),
    "name number": (_set(None, "name", 5), "name: must be a string (got 5)"),
    "size_bytes string": (_set(None, "size_bytes", "4574861"), 'size_bytes: must be an integer (got "4574861")'),
    "optimizers string": (_set("session", "disabled_optimizers", "NchwcTransformer"),
                          'session.disabled_optimizers: must be an array (got "NchwcTransformer")'),
    "requires unknown": (_set("requires", "cuda", "12"), "requires.cuda: is not a known field"),
    "requires version": (_set("requires", "onnxruntime", "latest"), 'requires.onnxruntime: must be a version like 1.23'),
    "step without name": (_set(None, "steps", [{"convs": 3}]), "steps[0].step: is required"),
    "cpu claim unknown": (_set("cpu", "exact_on", "everywhere"), 'cpu.exact_on: must be one of "any", "vnni-or-arm"'),
    "cpu weight boolean": (_set("cpu", "max_abs_weight", True), "cpu.max_abs_weight: must be an integer (got true)"),
    "verification string": (_set(None, "verification", "passed"), 'verification: must be an object (got "passed")'),
    "calibration images string": (_set(None, "calibration", {"images": "a.jpg"}),
                                  'calibration.images: must be an array (got "a.jpg")'),
    "schema_version string": (_set(None, "schema_version", "1"), 'schema_version: must be an integer (got "1")'),
    "schema_version zero": (_set(None, "schema_version", 0), "schema_version: must be >= 1 (got 0)"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_manifest_is_refused_before_the_model_loads(variant: tuple[Path, dict[str, Any]], case: str) -> None:
    model, good = variant
    write, problem = BAD[case]
    path = models.manifest_path(model)
    path.write_text(write(copy.deepcopy(good)))
    expected = re.escape(f"{path}: {problem}")
    with sessions_created() as seen:
        with pytest.raises(ModelError, match=expected) as by_path:
            models.resolve(model)
        with pytest.raises(ModelError, match=expected):
            new_session("variant", cache_dir=model.parent)
    assert seen == [], "the model was loaded despite its manifest"
    assert "\n" not in str(by_path.value) and len(str(by_path.value)) < len(str(path)) + 160


def test_cutq_does_not_write_a_manifest_it_would_refuse(variant: tuple[Path, dict[str, Any]]) -> None:
    model, good = variant
    before = models.manifest_path(model).read_bytes()
    with pytest.raises(ModelError, match=re.escape(f"{models.manifest_path(model)}: input.std[0]: must be >= 0.01 (got -0.2)")):
        models.write_manifest(model, {**good, "input": {**good["input"], "std": [-0.2, 0.2, 0.2]}})
    assert models.manifest_path(model).read_bytes() == before
    assert sorted(p.name for p in model.parent.iterdir()) == ["variant.json", "variant.onnx"]  # no temp file left
    # What is checked is the JSON written, so a pipeline's tuples are lists as the reader will see them.
    models.write_manifest(model, {**good, "input": {"size": (320, 320), "mean": (0.5,) * 3, "std": (0.5,) * 3}})
    assert models.resolve(model).input == InputSpec(mean=(0.5,) * 3, std=(0.5,) * 3)


def test_a_bad_manifest_does_not_hide_the_rest_of_the_cache(variant: tuple[Path, dict[str, Any]], u2netp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    model, good = variant
    broken = model.with_name("broken.onnx")
    shutil.copyfile(u2netp_path, broken)
    models.manifest_path(broken).write_text(json.dumps({**good, "input": "u2netp"}))
    listed = [info.name for info in models.list_models(model.parent) if info.kind == "variant"]
    assert listed == ["variant"]
    assert f"{models.manifest_path(broken)}: input: must be an object" in capsys.readouterr().err


def test_the_schema_is_versioned_and_shipped() -> None:
    schema = manifest.schema()
    assert schema["$id"] == f"urn:cutq:manifest:{manifest.SCHEMA_VERSION}" and schema["type"] == "object"
    assert schema["properties"]["schema_version"]["maximum"] == manifest.SCHEMA_VERSION
    package_data = tomllib.loads((ROOT / "runtime" / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert manifest.SCHEMA_FILE in package_data["cutq_runtime"]
