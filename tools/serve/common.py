"""What the serve tools share: the photos, starting and stopping server processes, /proc and /metrics readings,
a stdlib PNG check, percentiles, tables and the pass/fail list.

Clients use only the standard library and httpx; servers always listen on 127.0.0.1 and are started (and stopped)
by the tool that needs them.
"""

from __future__ import annotations

import datetime
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
DAVIS = REPO.parent / "shared" / "data" / "davis-val" / "images"
HOST = "127.0.0.1"
LOG_DIR = REPO / ".cache" / "serve-bench" / "logs"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 2**20
# The other INT8 variants `make quantize` / `cutq quantize --fast` leave in the cache; tools default to those present.
INT8_VARIANTS = ("u2netp-int8", "u2net-int8", "u2net-p50-fast-int8")


# ---------------------------------------------------------------- photos


@dataclass(frozen=True)
class Photo:
    name: str
    data: bytes
    content_type: str  # image/png or image/jpeg
    width: int
    height: int


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG or baseline/progressive JPEG, from its header (no decoder needed)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return struct.unpack(">II", data[16:24])
    if data.startswith(b"\xff\xd8"):
        pos = 2
        while pos + 9 < len(data):
            if data[pos] != 0xFF:
                pos += 1
                continue
            marker = data[pos + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
                pos += 1 if marker == 0xFF else 2
                continue
            length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start-of-frame segment
                height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
                return width, height
            pos += 2 + length
    raise ValueError("not a PNG or JPEG with a readable size")


def photos(davis: int = 5) -> list[Photo]:
    """calibration_data/*.png plus the first frame of `davis` DAVIS scenes spread over the set (when it is there)."""
    paths = sorted((REPO / "calibration_data").glob("*.png"))
    scenes = sorted(DAVIS.glob("*_00000.jpg")) if DAVIS.is_dir() else []
    if scenes and davis > 0:
        step = max(1, len(scenes) // davis)
        paths += scenes[::step][:davis]
    out = []
    for path in paths:
        data = path.read_bytes()
        width, height = image_size(data)
        kind = "image/png" if path.suffix == ".png" else "image/jpeg"
        out.append(Photo(path.name, data, kind, width, height))
    if not out:
        sys.exit("no photos: calibration_data/*.png is missing")
    return out


def describe_photos(items: Sequence[Photo]) -> str:
    return ", ".join(f"{p.name} ({p.width}x{p.height})" for p in items)


# ---------------------------------------------------------------- the machine


def cpu_description() -> str:
    """lscpu's model name with family/model, cores and hypervisor, e.g. 'AMD EPYC (family 25, model 17), 2 CPUs, KVM'."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True, env={**os.environ, "LC_ALL": "C"}).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown CPU (lscpu failed)"
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}
    text = f"{fields.get('Model name', '?')} (family {fields.get('CPU family', '?')}, model {fields.get('Model', '?')})"
    text += f", {fields.get('CPU(s)', '?')} CPUs"
    if fields.get("Hypervisor vendor"):
        text += f", {fields['Hypervisor vendor']} guest"
    if "avx512_vnni" in fields.get("Flags", ""):
        text += ", AVX-512 VNNI"
    return text


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


# ---------------------------------------------------------------- /proc


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (bytes) and Threads of a live process, from /proc/<pid>/status."""
    out = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
            elif key == "Threads":
                out[key] = int(value)
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5), counted after "pid (comm)"


# ---------------------------------------------------------------- server processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen
    log: Path
    command: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 90.0) -> int:
        """SIGTERM, wait up to `timeout` s (SIGKILL after); the exit status (negative: killed by that signal)."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def cutq_command(models: Sequence[str], port: int, *extra: str) -> list[str]:
    """`python -m cutq_runtime serve` with the tools' interpreter (the project venv)."""
    return [sys.executable, "-m", "cutq_runtime", "serve", "--host", HOST, "--port", str(port),
            *(arg for model in models for arg in ("--model", model)), *extra]


def start(name: str, command: Sequence[str], port: int, ready_path: str, *, env: dict[str, str] | None = None,
          ready_timeout: float = 300.0) -> Server:
    """Start `command` (which must listen on 127.0.0.1:`port`), its output to .cache/serve-bench/logs/<name>.log,
    and wait until GET `ready_path` answers 200."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.log"
    with open(log, "wb") as out:  # a file, not a pipe: a pipe nobody reads blocks the server once 64 KB of log pile up
        process = subprocess.Popen(list(command), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                   start_new_session=True)
    server = Server(name, f"http://{HOST}:{port}", process, log, list(command))
    deadline = time.monotonic() + ready_timeout
    with httpx.Client(timeout=5) as client:
        while True:
            with suppress(httpx.HTTPError):
                if client.get(server.url + ready_path).status_code == 200:
                    return server
            if not server.alive():
                raise RuntimeError(f"{name} exited with {process.returncode} before it was ready:\n{server.tail()}")
            if time.monotonic() > deadline:
                server.stop(5)
                raise RuntimeError(f"{name} not ready after {ready_timeout:.0f} s:\n{server.tail()}")
            time.sleep(0.25)


@contextmanager
def cutq_server(models: Sequence[str], *extra: str, name: str | None = None) -> Iterator[Server]:
    """A cutq server with `models` (and extra options) for the duration of the block; stopped with SIGTERM after."""
    port = free_port()
    server = start(name or "cutq-" + "+".join(models), cutq_command(models, port, *extra), port, "/readyz")
    try:
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------- HTTP


def metrics(client: httpx.Client, url: str) -> dict[str, float]:
    """GET /metrics as {sample name (with its labels, if any): value}."""
    response = client.get(url + "/metrics")
    response.raise_for_status()
    out = {}
    for line in response.text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def cutout_request(client: httpx.Client, url: str, photo: Photo, model: str | None, style: str = "v1-multipart",
                   **params: str) -> httpx.Request:
    """One cut-out request, built (body in memory) but not sent. style: 'v1-multipart' or 'v1-raw' (POST
    /v1/cutout) or 'rembg' (POST /api/remove with rembg's form fields; `params` go in the form, except bgc which
    rembg reads from the query)."""
    files = {"file": (photo.name, photo.data, photo.content_type)}
    if style == "rembg":
        query = {"bgc": params.pop("bgc")} if "bgc" in params else None
        form = {**({"model": model} if model else {}), **params}
        request = client.build_request("POST", url + "/api/remove", files=files, data=form, params=query)
    elif style == "v1-raw":
        request = client.build_request("POST", url + "/v1/cutout", content=photo.data,
                                       headers={"content-type": photo.content_type},
                                       params={**({"model": model} if model else {}), **params})
    else:
        request = client.build_request("POST", url + "/v1/cutout", files=files,
                                       params={**({"model": model} if model else {}), **params})
    request.read()
    return request


def post_cutout(client: httpx.Client, url: str, photo: Photo, model: str | None, style: str = "v1-multipart",
                **params: str) -> httpx.Response:
    """Send `cutout_request(...)` and return the response."""
    return client.send(cutout_request(client, url, photo, model, style, **params))


PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> channels (8-bit)


def png_info(data: bytes) -> tuple[int, int, int]:
    """(width, height, colour type) of a complete, valid 8-bit PNG: signature, every chunk's CRC, IHDR first,
    IEND last, and the IDAT stream inflating to exactly height rows of width pixels. ValueError otherwise."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError("no PNG signature")
    pos, chunks, idat = 8, [], []
    while pos < len(data):
        if pos + 12 > len(data):
            raise ValueError("truncated chunk")
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        crc = data[pos + 8 + length:pos + 12 + length]
        if len(body) != length or len(crc) != 4 or zlib.crc32(kind + body) != struct.unpack(">I", crc)[0]:
            raise ValueError(f"bad {kind!r} chunk")
        chunks.append(kind)
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + length
    if not chunks or chunks[0] != b"IHDR" or chunks[-1] != b"IEND" or not idat:
        raise ValueError("chunks out of order or missing")
    if depth != 8 or colour not in PNG_CHANNELS:
        raise ValueError(f"unexpected bit depth {depth} / colour type {colour}")
    raw = zlib.decompress(b"".join(idat))
    if len(raw) != height * (1 + width * PNG_CHANNELS[colour]):
        raise ValueError("pixel data of the wrong size")
    return width, height, colour


def check_cutout(response: httpx.Response, photo: Photo, colour: int = 6) -> str | None:
    """None when `response` is a 200 PNG cut-out of `photo` (same size, RGBA by default); else what is wrong."""
    if response.status_code != 200:
        return f"status {response.status_code}: {response.text[:200]}"
    try:
        width, height, got = png_info(response.content)
    except ValueError as exc:
        return f"not a valid PNG ({exc})"
    if (width, height) != (photo.width, photo.height) or got != colour:
        return f"PNG {width}x{height} colour type {got}, expected {photo.width}x{photo.height} colour type {colour}"
    return None


# ---------------------------------------------------------------- numbers and reports


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), interpolated between the closest ranks (numpy's default); nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table (also readable as plain text)."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells[1:])])


class Checks:
    """Named pass/fail results; `report()` prints them and returns the exit status (1 if any failed)."""

    def __init__(self) -> None:
        self.results: list[tuple[str, bool, str]] = []

    def add(self, name: str, ok: bool, detail: str = "") -> bool:
        self.results.append((name, bool(ok), detail))
        return bool(ok)

    @property
    def ok(self) -> bool:
        return all(ok for _, ok, _ in self.results)

    def report(self) -> int:
        print(table(["check", "result", "detail"], [(n, "PASS" if ok else "FAIL", d) for n, ok, d in self.results]))
        print(f"\n{'all checks passed' if self.ok else 'SOME CHECKS FAILED'}")
        return 0 if self.ok else 1
