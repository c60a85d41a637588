"""The Python API: input kinds, session reuse across threads, paths, .ort files, determinism."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from cutq_runtime import ModelError, RemoveOptions, SessionConfig, new_session, remove
from cutq_runtime.preprocess import to_tensor
from cutq_runtime.registry import InputSpec

from .conftest import CALIBRATION, decode_rgba


def test_returns_the_kind_it_was_given(u2netp, photo: bytes) -> None:
    out = remove(photo, session=u2netp)
    assert isinstance(out, bytes) and out.startswith(b"\x89PNG")
    img = Image.open(io.BytesIO(photo))
    pil = remove(img, session=u2netp)
    assert isinstance(pil, Image.Image) and pil.mode == "RGBA" and pil.size == img.size
    arr = remove(np.asarray(img), session=u2netp)
    assert isinstance(arr, np.ndarray) and arr.shape == (img.height, img.width, 4)
    assert np.array_equal(arr, np.asarray(pil)) and np.array_equal(decode_rgba(out), np.asarray(pil))


def test_only_mask_and_bgcolor(u2netp, photo: bytes) -> None:
    mask = remove(Image.open(io.BytesIO(photo)), session=u2netp, only_mask=True)
    assert mask.mode == "L"
    flat = decode_rgba(remove(photo, session=u2netp, bgcolor=(0, 255, 0, 255)))
    assert (flat[..., 3] == 255).all()
    background = np.asarray(mask) < 5
    assert background.any()
    assert (flat[background][:, 1] > 240).mean() > 0.9  # the green shows through where the mask is empty


def test_session_is_safe_across_threads(u2netp) -> None:
    photos = [(CALIBRATION / name).read_bytes() for name in ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg")]
    sequential = [remove(p, session=u2netp) for p in photos]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(lambda p: remove(p, session=u2netp), photos * 2))
    assert parallel == sequential * 2


def _most_inferences_at_once(session, photo: bytes) -> int:
    """Six cut-outs on four threads, counting the real ONNX Runtime session's calls on their way in and out."""
    import threading
    import time

    engine, lock, busy, most = session.inference, threading.Lock(), [0], [0]

    class Counted:
        def run(self, *args):
            with lock:
                busy[0] += 1
                most[0] = max(most[0], busy[0])
            try:
                time.sleep(0.02)  # widen the window in which a second call would overlap
                return engine.run(*args)
            finally:
                with lock:
                    busy[0] -= 1

    session.inference = Counted()
    with ThreadPoolExecutor(max_workers=4) as pool:
        assert len(set(pool.map(lambda _: remove(photo, session=session), range(6)))) == 1
    return most[0]


def test_parallel_runs_caps_inferences_in_flight(u2netp_path: Path, photo: bytes) -> None:
    """A folder run with one worker keeps one inference at a time while other photos are decoded and encoded;
    without the cap the same calls do overlap (so the first count can fail)."""
    capped = new_session(u2netp_path, config=SessionConfig(threads=1, parallel_runs=1))
    assert _most_inferences_at_once(capped, photo) == 1
    assert _most_inferences_at_once(new_session(u2netp_path, config=SessionConfig(threads=1)), photo) > 1


def test_same_input_same_bytes(u2netp, photo: bytes) -> None:
    assert remove(photo, session=u2netp) == remove(photo, session=u2netp)


def test_png_level_changes_size_not_pixels(u2netp, photo: bytes) -> None:
    fast = remove(photo, session=u2netp, options=RemoveOptions(png_compress_level=1))
    small = remove(photo, session=u2netp, options=RemoveOptions(png_compress_level=9))
    assert np.array_equal(decode_rgba(fast), decode_rgba(small))
    assert len(small) < len(fast)


def test_preprocess_matches_float64_reference() -> None:
    """The table-driven preprocessing equals rembg's float64 arithmetic, value for value."""
    img = Image.open(CALIBRATION / "coffee.png")
    spec = InputSpec()
    pixels = np.array(img.convert("RGB").resize(spec.size, Image.Resampling.LANCZOS))
    scaled = pixels / max(np.max(pixels), 1e-6)
    reference = np.stack([(scaled[..., c] - spec.mean[c]) / spec.std[c] for c in range(3)])[None].astype(np.float32)
    assert np.array_equal(to_tensor(img, spec), reference)
    black = Image.new("RGB", (50, 40))
    assert np.isfinite(to_tensor(black, spec)).all()


def test_new_session_takes_a_path_threads_and_providers(u2netp_path: Path, photo: bytes, u2netp) -> None:
    session = new_session(u2netp_path, threads=1, providers=["CPUExecutionProvider"])
    assert session.inference.get_session_options().intra_op_num_threads == 1
    assert remove(photo, session=session) == remove(photo, session=u2netp)


def test_ort_format_file_serves_the_same_masks(tmp_path: Path, u2netp_path: Path, u2netp, photo: bytes) -> None:
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "u2netp.ort")
    options.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(str(u2netp_path), options, providers=["CPUExecutionProvider"])
    session = new_session(tmp_path / "u2netp.ort", config=SessionConfig(optimization="basic"))
    ours = decode_rgba(remove(photo, session=session, only_mask=True))
    ref = decode_rgba(remove(photo, session=u2netp, only_mask=True))
    assert np.abs(ours - ref).max() <= 1


def test_manifest_can_leave_out_graph_optimizers(tmp_path: Path, u2netp_path: Path, u2netp, photo: bytes) -> None:
    """A variant's manifest may name ONNX Runtime optimizers to leave out (INT8 variants do, see the session
    module); the masks stay the same, and a malformed entry is a clear error."""
    model = tmp_path / "variant.onnx"
    model.write_bytes(u2netp_path.read_bytes())
    manifest = tmp_path / "variant.json"
    manifest.write_text(json.dumps({"session": {"disabled_optimizers": ["NchwcTransformer"]}}))
    session = new_session(model)
    assert session.disabled_optimizers == ("NchwcTransformer",) and u2netp.disabled_optimizers == ()
    ours = decode_rgba(remove(photo, session=session, only_mask=True))
    ref = decode_rgba(remove(photo, session=u2netp, only_mask=True))
    assert np.abs(ours - ref).max() <= 1
    for bad in ({"disabled_optimizers": "NchwcTransformer"}, "NchwcTransformer"):
        manifest.write_text(json.dumps({"session": bad}))
        with pytest.raises(ModelError, match=r"variant\.json: session(\.disabled_optimizers)?: must be an (array|object)"):
            new_session(model)


def test_missing_or_foreign_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such model file"):
        new_session(tmp_path / "absent.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelError, match=r"junk\.onnx: not a loadable ONNX model"):
        new_session(junk)
    with pytest.raises(ModelError, match="unknown model 'u3net'"):
        new_session("u3net")


def test_unsupported_input_type(u2netp) -> None:
    with pytest.raises(TypeError, match="bytes, a PIL image or a numpy array"):
        remove("photo.jpg", session=u2netp)  # type: ignore[call-overload]


def test_low_memory_session_gives_the_same_bytes(u2netp_path: Path, u2netp, photo: bytes) -> None:
    """Giving the arena back after each run changes where ONNX Runtime allocates, never what it computes."""
    low = new_session(u2netp_path, config=SessionConfig(low_memory=True))
    assert remove(photo, session=low) == remove(photo, session=u2netp)
    assert remove(photo, session=low) == remove(photo, session=u2netp)  # and again, with the arena given back


def test_cutout_in_bands_equals_one_composite() -> None:
    """The band-by-band composite and PNG filter give exactly the whole-image operations' pixels."""
    from cutq_runtime import png, postprocess

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (1000, 1500, 3), dtype=np.uint8), "RGB")
    mask = Image.fromarray(rng.integers(0, 256, (1000, 1500), dtype=np.uint8), "L")
    whole = Image.composite(img, Image.new("RGBA", img.size, 0), mask)
    banded = postprocess.cutout(img, mask)
    assert np.array_equal(np.asarray(banded), np.asarray(whole))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png.encode(banded)))), np.asarray(whole))
