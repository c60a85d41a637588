"""A real `cutq_runtime serve` process on 127.0.0.1 for the server's tests (and the page's)."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    url: str  # http://127.0.0.1:<port>
    process: subprocess.Popen
    log: Path  # what the server printed: a file, not a pipe nobody reads (a full pipe would block the server)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


@contextmanager
def running_server(*args: str, ready_timeout: float = 180.0) -> Iterator[Server]:
    """Start `python -m cutq_runtime serve --port <free> ARGS`, wait for /readyz 200, stop it (SIGTERM) after."""
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="cutq-serve-", suffix=".log")[1])
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "cutq_runtime", "serve", "--port", str(port), *args],
                                   stdout=out, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + ready_timeout
        while _status(f"{server.url}/readyz") != 200:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{server.output()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after {ready_timeout:.0f} s")
            time.sleep(0.2)
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
        log.unlink(missing_ok=True)
