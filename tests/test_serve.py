"""`cutq serve`: the real app and the real u2netp behind it, in process (TestClient) and as a process (SIGTERM)."""

from __future__ import annotations

import io
import re
import struct
import threading
import time
import zlib
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cutq_runtime import new_session, remove
from cutq_runtime.api import RemoveOptions, cut
from cutq_runtime.images import decode, encode_webp
from cutq_runtime.serve.app import create_app
from cutq_runtime.serve.config import ServeConfig

from .conftest import CALIBRATION, jpeg_bytes
from .serve_util import running_server

PHOTO = (CALIBRATION / "chelsea.png").read_bytes()
CONFIG = ServeConfig(models=("u2netp",), max_upload_mb=2, max_concurrency=2, threads=1)


def _ready(client: TestClient) -> TestClient:
    deadline = time.monotonic() + 120
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").json()
        time.sleep(0.1)
    return client


@pytest.fixture(scope="module")
def client(u2netp_path) -> Iterator[TestClient]:
    with TestClient(create_app(CONFIG), raise_server_exceptions=False) as test_client:
        yield _ready(test_client)


def _png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def _declared_png(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height: a decompression bomb in 60 bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_output_equals_the_library_for_the_same_parameters(client: TestClient) -> None:
    session = new_session("u2netp", threads=CONFIG.session_threads)
    cases = [({}, RemoveOptions()), ({"only_mask": "true"}, RemoveOptions(only_mask=True)),
             ({"bgcolor": "255,255,255,255"}, RemoveOptions(bgcolor=(255, 255, 255, 255)))]
    for params, options in cases:
        expected = remove(PHOTO, session=session, options=options)
        multipart = client.post("/v1/cutout", params=params, files={"file": ("chelsea.png", PHOTO, "image/png")})
        raw = client.post("/v1/cutout", params=params, content=PHOTO, headers={"content-type": "image/png"})
        for response in (multipart, raw):
            assert response.status_code == 200, response.text
            assert response.content == expected and response.headers["content-type"] == "image/png"
            assert float(response.headers["x-cutq-latency-ms"]) > 0 and response.headers["x-cutq-model"] == "u2netp"
    rembg_style = client.post("/api/remove", data={"model": "u2netp", "om": "true"}, files={"file": PHOTO})
    assert rembg_style.content == remove(PHOTO, session=session, options=RemoveOptions(only_mask=True))
    webp = client.post("/v1/cutout", params={"format": "webp"}, content=PHOTO)
    assert webp.headers["content-type"] == "image/webp"
    assert webp.content == encode_webp(cut(decode(PHOTO, "x"), session, RemoveOptions()))


def _odd_images() -> dict[str, bytes]:
    rgb = Image.open(CALIBRATION / "chelsea.png").convert("RGB").resize((120, 80))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: the cut-out comes back 80 wide, 120 high
    frames = [rgb.convert("P"), rgb.rotate(90, expand=False).convert("P")]
    animated = io.BytesIO()
    frames[0].save(animated, "GIF", save_all=True, append_images=frames[1:], duration=100)
    sixteen = Image.fromarray((np.linspace(0, 65535, 120 * 80).reshape(80, 120)).astype(np.uint16))
    return {"cmyk": jpeg_bytes(rgb.convert("CMYK")), "16-bit": _png(sixteen), "animated": animated.getvalue(),
            "exif": jpeg_bytes(rgb, exif=exif), "1x1": _png(Image.new("RGB", (1, 1), (200, 10, 10))),
            "palette": _png(rgb.convert("P")), "la": _png(rgb.convert("LA"))}


@pytest.mark.parametrize("name", list(_odd_images()))
def test_odd_but_valid_images_are_cut_out(client: TestClient, name: str) -> None:
    response = client.post("/api/remove", files={"file": (f"{name}.img", _odd_images()[name])})
    assert response.status_code == 200, response.text
    size = Image.open(io.BytesIO(response.content)).size
    assert size == {"exif": (80, 120), "1x1": (1, 1)}.get(name, (120, 80))


def _bad_requests() -> dict[str, tuple[str, dict, int]]:
    """name -> (path, httpx request arguments, expected status)."""
    truncated = jpeg_bytes(Image.open(CALIBRATION / "chelsea.png").convert("RGB"))[:3000]
    fields = {f"f{i}": "x" for i in range(1001)}
    return {
        "empty body": ("/v1/cutout", {"content": b""}, 400),
        "empty file": ("/api/remove", {"files": {"file": ("a.png", b"")}}, 400),
        "truncated jpeg": ("/api/remove", {"files": {"file": ("t.jpg", truncated)}}, 400),
        "random bytes": ("/api/remove", {"files": {"file": ("r.png", np.random.default_rng(0).bytes(5000))}}, 415),
        "text/plain": ("/v1/cutout", {"content": b"hello", "headers": {"content-type": "text/plain"}}, 415),
        "30000x30000 png": ("/api/remove", {"files": {"file": ("bomb.png", _declared_png(30000, 30000))}}, 413),
        "over the upload limit": ("/v1/cutout", {"content": b"\0" * (3 * 2**20)}, 413),
        "1001 form fields": ("/api/remove", {"data": fields, "files": {"file": ("c.png", PHOTO)}}, 400),
        "no file field": ("/api/remove", {"data": {"model": "u2netp"}}, 422),
        "bgc=300,a": ("/api/remove?bgc=300,a", {"files": {"file": ("c.png", PHOTO)}}, 422),
        "unknown model": ("/v1/cutout?model=u2net-nope", {"content": PHOTO}, 422),
        "bad format": ("/v1/cutout?format=gif", {"content": PHOTO}, 422),
        "alpha matting": ("/api/remove", {"data": {"a": "true"}, "files": {"file": ("c.png", PHOTO)}}, 422),
        "url fetch off": ("/api/remove?url=http://example.com/a.png", {"method": "GET"}, 403),
    }


@pytest.mark.parametrize("name", list(_bad_requests()))
def test_bad_input_gets_a_clear_4xx_and_the_server_stays_up(client: TestClient, name: str) -> None:
    path, arguments, status = _bad_requests()[name]
    method = arguments.pop("method", "POST")
    response = client.request(method, path, **arguments)
    assert response.status_code == status, response.text
    assert response.json()["error"]
    assert client.post("/v1/cutout", content=PHOTO).status_code == 200


def test_chunked_upload_over_the_limit_is_cut_off_while_reading(client: TestClient) -> None:
    sent = []

    def body() -> Iterator[bytes]:
        for _ in range(64):  # 4 MB in 64 KB chunks, no Content-Length
            sent.append(1)
            yield b"\0" * 65536

    response = client.post("/v1/cutout", content=body())
    assert response.status_code == 413 and "limit" in response.json()["error"]


def test_models_health_metrics_and_token(client: TestClient) -> None:
    listed = client.get("/v1/models").json()["models"]
    assert [m["name"] for m in listed] == ["u2netp"] and listed[0]["size_bytes"] > 4e6 and listed[0]["gmac"] > 19
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.post("/v1/cutout", content=PHOTO).status_code == 200
    metrics = client.get("/metrics").text
    # process-wide (other tests' sessions live in this process too); exactly 1 in a server process, see below
    assert re.search(r"^cutq_onnx_sessions [1-9]", metrics, re.M)
    assert 'cutq_requests_total{route="/v1/cutout",status="200"}' in metrics
    assert "cutq_inference_seconds_bucket" in metrics and "process_resident_memory_bytes" in metrics
    assert client.get("/").status_code == 200 and "<html" in client.get("/").text.lower()
    with TestClient(create_app(ServeConfig(models=("u2netp",), token="s3cret"))) as guarded:
        _ready(guarded)
        assert guarded.post("/v1/cutout", content=PHOTO).status_code == 401
        ok = guarded.post("/v1/cutout", content=PHOTO, headers={"authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and guarded.get("/healthz").status_code == 200


def test_full_queue_answers_503_and_in_flight_never_exceeds_the_limit(u2netp_path) -> None:
    config = ServeConfig(models=("u2netp",), max_concurrency=1, max_queue=1, threads=1)
    app = create_app(config)
    with TestClient(app) as test_client:
        _ready(test_client)
        big = _png(Image.open(CALIBRATION / "astronaut.png").convert("RGB").resize((1600, 1600)))
        statuses: list[int] = []
        workers = [threading.Thread(target=lambda: statuses.append(test_client.post("/v1/cutout", content=big).status_code))
                   for _ in range(8)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert statuses.count(200) >= 2 and statuses.count(503) >= 1 and set(statuses) <= {200, 503}
        assert app.state.pool.peak_running == 1 and app.state.pool.refused == statuses.count(503)


def test_sigterm_lets_in_flight_requests_finish(u2netp_path) -> None:
    with running_server("--model", "u2netp", "--max-concurrency", "2", "--max-queue", "8", "--threads", "1") as server:
        results: list[httpx.Response] = []

        def post() -> None:
            results.append(httpx.post(f"{server.url}/v1/cutout", content=PHOTO, timeout=120))

        clients = [threading.Thread(target=post) for _ in range(8)]
        for c in clients:
            c.start()
        assert "\ncutq_onnx_sessions 1\n" in httpx.get(f"{server.url}/metrics").text  # one per variant, ever
        deadline = time.monotonic() + 30
        while "cutq_inflight 2" not in httpx.get(f"{server.url}/metrics").text:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        server.process.terminate()
        for c in clients:
            c.join()
        assert server.process.wait(60) == 0
    assert [r.status_code for r in results] == [200] * 8
    assert all(r.content == results[0].content for r in results)


def test_url_fetching_is_opt_in_and_refuses_internal_addresses(u2netp_path) -> None:
    with TestClient(create_app(ServeConfig(models=("u2netp",), allow_url=True))) as opened:
        _ready(opened)
        for url in ("http://127.0.0.1:9/cat.png", "http://169.254.169.254/latest/meta-data", "file:///etc/passwd"):
            response = opened.get("/api/remove", params={"url": url})
            assert response.status_code == 400, (url, response.text)
            assert response.json()["error"]
