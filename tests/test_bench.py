"""`cutq bench` through the real CLI process on u2netp (real onnxruntime, real rembg), and its pieces.

The run is as small as a real run can be (2 photos, 2 session runs) and shared by the checks on the JSON
schema, the Markdown and the HTML report. No figure here is a duration: only that each was measured.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from cutq.benchmarks import timing
from cutq.benchmarks.svg import Point, pareto_front
from cutq.benchmarks.variants import select
from cutq_runtime.models import write_manifest

from .conftest import CALIBRATION
from .test_cli import run
from .tiny import save_tiny

ROW_KEYS = {"name", "size_bytes", "latency_p50_ms", "latency_p95_ms", "e2e_ms", "peak_rss_mb", "ssim_vs_fp32_min",
            "ssim_vs_fp32_mean", "mae_vs_fp32", "gt_mae", "gt_iou", "gt_max_fbeta", "gt_s_measure"}
MEASURED = ROW_KEYS - {"name"} | {"latency_1t_p50_ms", "load_ms", "throughput_ips", "params", "gmac"}


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two bundled photos with a made-up ground truth (a centred box): enough for every metric to be computed."""
    root = tmp_path_factory.mktemp("eval")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    for name in ("chelsea.png", "coffee.png"):
        shutil.copy(CALIBRATION / name, root / "images" / name)
        width, height = Image.open(CALIBRATION / name).size
        box = np.zeros((height, width), np.uint8)
        box[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = 255
        Image.fromarray(box).save(root / "masks" / name)
    return root


@pytest.fixture(scope="module")
def bench_run(eval_dir: Path, tmp_path_factory: pytest.TempPathFactory, u2netp_path: Path) -> dict[str, Path | str]:
    out = tmp_path_factory.mktemp("bench")
    paths = {kind: out / f"b.{kind}" for kind in ("json", "md", "html")}
    proc = run("cutq", "bench", "--model", "u2netp", "--model", "u2netp-nope", "--eval-dir", str(eval_dir),
               "--eval-count", "2", "--timing-count", "1", "--runs", "2", "--warmup", "0", "--repeats", "1",
               "--no-pull", "--json", str(paths["json"]), "--markdown", str(paths["md"]), "--html", str(paths["html"]))
    assert proc.returncode == 0, proc.stderr.decode()
    return {**paths, "stdout": proc.stdout.decode(), "stderr": proc.stderr.decode()}


def test_json_schema_of_a_real_run(bench_run: dict) -> None:
    data = json.loads(Path(bench_run["json"]).read_text())
    assert data["schema"] == 1
    machine = data["machine"]
    assert {"cpu_model", "flags", "vnni", "cores", "onnxruntime"} <= machine.keys()
    assert isinstance(machine["vnni"], bool) and machine["cores"] >= 1
    rows = {row["name"]: row for row in data["variants"]}
    assert list(rows) == ["u2netp", "rembg u2netp"]
    for row in rows.values():
        assert row.keys() >= ROW_KEYS
        missing = sorted(key for key in MEASURED if row[key] is None)
        assert not missing, (row["name"], missing)
        assert row["latency_p95_ms"] >= row["latency_p50_ms"] > 0
        assert 0 <= row["gt_mae"] <= 1 and 0 <= row["gt_iou"] <= 1 and row["gt_images"] == 2
    assert rows["u2netp"]["ssim_vs_fp32_min"] == 1.0 and rows["u2netp"]["mae_vs_fp32"] == 0.0
    assert rows["rembg u2netp"]["ssim_vs_fp32_min"] > 0.999  # same model file: rembg's masks equal cutq's FP32
    assert rows["u2netp"]["e2e_vs_rembg"] is not None and rows["rembg u2netp"]["e2e_vs_rembg"] == 1.0
    assert rows["u2netp"]["params"] == 1_125_485
    assert data["images"]["eval"] == ["chelsea.png", "coffee.png"] and data["images"]["ground_truth"] == 2


def test_a_missing_variant_is_a_note_not_a_crash(bench_run: dict) -> None:
    notes = json.loads(Path(bench_run["json"]).read_text())["notes"]
    assert any(note.startswith("u2netp-nope: skipped (unknown model 'u2netp-nope'") for note in notes), notes
    assert "u2netp-nope" in bench_run["stderr"]


def test_only_missing_variants_is_a_clean_error(tmp_path: Path) -> None:
    proc = run("cutq", "bench", "--model", "nope", "--no-pull", "--cache-dir", str(tmp_path))
    assert proc.returncode == 2
    assert "nothing to benchmark" in proc.stderr.decode() and "Traceback" not in proc.stderr.decode()


def test_markdown_and_terminal_tables(bench_run: dict) -> None:
    text = Path(bench_run["md"]).read_text()
    starts = [line.split(" | ")[0] for line in text.splitlines() if line.startswith("| ")]
    assert starts.count("| u2netp") == 2 and starts.count("| rembg u2netp") == 2  # speed table and quality table
    assert "cutq bench --model u2netp" in text and "onnxruntime" in text
    assert "rembg u2netp" in bench_run["stdout"] and "S-measure" in bench_run["stdout"]


def test_html_is_self_contained_with_charts_and_cutouts(bench_run: dict) -> None:
    html = Path(bench_run["html"]).read_text()
    assert html.count("<svg") == 4  # Pareto scatter, size, memory and end-to-end bars
    assert "Latency against fidelity" in html and "Peak memory" in html
    assert len(re.findall(r'src="data:image/jpeg;base64,', html)) == 2 * 3  # 2 photos x (photo + 2 variants)
    assert "<script" not in html
    assert not re.search(r'(src|href)="https?:', html)  # nothing fetched from the network


def test_variants_find_their_fp32_reference_through_manifests(tmp_path: Path, u2netp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "no-rembg"))  # no released model found outside the cache
    monkeypatch.setenv("REMBG_HOME", str(tmp_path / "no-rembg"))
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "u2netp.onnx").symlink_to(u2netp_path)
    elsewhere = tmp_path / "elsewhere"  # pruned with --out outside the cache, then quantized into it
    elsewhere.mkdir()
    write_manifest(save_tiny(elsewhere / "mine.onnx"), {"name": "mine", "source": {"name": "u2netp"}})
    for name, source in (("u2netp-p50", {"base": "u2netp"}), ("u2netp-p50-int8", {"name": "u2netp-p50"}),
                         ("orphan", {}), ("mine-int8", {"name": "mine", "path": str(elsewhere / "mine.onnx")})):
        model = save_tiny(cache / f"{name}.onnx")
        write_manifest(model, {"name": name, "source": source})
    selection = select(cache, [], everything=True, pull=False, rembg=False)
    found = {v.name: (v.kind, v.reference) for v in selection.variants}
    assert found == {"u2netp": ("fp32", "u2netp"), "u2netp-p50": ("pruned", "u2netp"),
                     "u2netp-p50-int8": ("pruned-int8", "u2netp"), "orphan": ("other", None),
                     "mine-int8": ("int8", "u2netp")}
    notes = "\n".join(selection.notes)
    assert "u2net: skipped" in notes and "u2netp-int8: not in the cache" in notes
    assert "orphan: its manifest names no source model" in notes
    assert "no pruned variant (u2netp" not in notes


def test_pareto_front_keeps_only_undominated_points() -> None:
    points = [Point(name, x, y, y, "#000") for name, x, y in
              (("fast-bad", 1, 0.90), ("slow-good", 4, 1.0), ("mid", 2, 0.99), ("dominated", 3, 0.95))]
    assert [p.label for p in pareto_front(points)] == ["fast-bad", "mid", "slow-good"]


def test_a_bad_ground_truth_mask_stops_the_run_at_once_naming_it(eval_dir: Path, tmp_path: Path, u2netp_path: Path) -> None:
    bad = tmp_path / "eval"
    shutil.copytree(eval_dir, bad)
    Image.new("L", (10, 10)).save(bad / "masks" / "coffee.png")
    proc = run("cutq", "bench", "--model", "u2netp", "--eval-dir", str(bad), "--no-pull", "--no-rembg")
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "Traceback" not in err
    assert "coffee.png: ground-truth mask is 10x10, its photo coffee.png is 600x400" in " ".join(err.split())


def test_evaluation_photos_avoid_the_scenes_variants_were_calibrated_on(tmp_path: Path) -> None:
    from cutq.benchmarks.quality import calibration_scenes, eval_images

    photos = tmp_path / "images"
    photos.mkdir()
    for scene in ("bear", "camel", "dog", "elk"):
        for frame in (0, 10):
            shutil.copy(CALIBRATION / "coffee.png", photos / f"{scene}_{frame:05d}.png")
    quantized = {"steps": [{"step": "calibrate", "images": ["bear_00000.png"]}]}
    pruned = {"calibration": {"images": ["camel_00010.png"]}, "steps": [{"step": "lowrank", "photos": ["elk_00000.png"]}]}
    scenes = calibration_scenes([quantized, pruned, None])
    assert scenes == {"bear", "camel", "elk"}
    assert [i.path.name for i in eval_images(tmp_path, 4, scenes)] == ["dog_00000.png", "dog_00010.png"]
    everything = frozenset({"bear", "camel", "dog", "elk"})
    assert len(eval_images(tmp_path, 8, everything)) == 8  # nothing unseen: all photos, and the run notes it


def test_ort_twins_are_rows_unless_left_out(tmp_path: Path, u2netp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "no-rembg"))
    monkeypatch.setenv("REMBG_HOME", str(tmp_path / "no-rembg"))
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "u2netp.onnx").symlink_to(u2netp_path)
    model = save_tiny(cache / "u2netp-int8.onnx")
    write_manifest(model, {"name": "u2netp-int8", "source": {"name": "u2netp"}})
    shutil.copy(model, model.with_suffix(".ort"))  # only its presence matters to the selection
    full = select(cache, [], everything=True, pull=False, rembg=False)
    assert {v.name for v in full.variants} == {"u2netp", "u2netp-int8", "u2netp-int8.ort"}
    quick = select(cache, [], everything=True, pull=False, rembg=False, ort_twins=False)
    assert {v.name for v in quick.variants} == {"u2netp", "u2netp-int8"}
    assert any("1 .ort file(s) beside their .onnx left out" in note for note in quick.notes)


def test_each_timed_call_follows_an_untimed_call_of_the_same_variant() -> None:
    """So no timed call shares the cores with the previous variant's still-spinning ONNX Runtime threads."""
    runners = [SimpleNamespace(variant=SimpleNamespace(name=n)) for n in "abc"]
    calls: list[tuple[str, int]] = []
    samples = timing._interleave(runners, 4, random.Random(0), lambda r, i: calls.append((r.variant.name, i)), settle=True)
    assert {k: len(v) for k, v in samples.items()} == {"a": 4, "b": 4, "c": 4}
    assert len(calls) == 24 and all(calls[k] == calls[k + 1] for k in range(0, 24, 2))
    assert len({tuple(c[0] for c in calls[k:k + 6:2]) for k in range(0, 24, 6)}) > 1  # the order is shuffled
    calls.clear()
    timing._interleave(runners, 4, random.Random(0), lambda r, i: calls.append((r.variant.name, i)))
    assert len(calls) == 12
