"""The Ray engine on a real two-node Ray cluster on this machine: `ray start --head --num-cpus 2` plus a second node
with `ray start --address ... --num-cpus 1`, started by the module fixture and killed (by the pids it started) at
the end, failed or not. u2netp and real photos; the local engine's outputs are the reference, byte for byte.

Needs `pip install "cutq[ray]"`; skipped without Ray. Run alone: `pytest -m ray tests/test_ray_engine.py`.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason='the Ray engine needs pip install "cutq[ray]"')

from cutq.engines import ray_engine  # noqa: E402  (after the skip: it is only useful with Ray)
from cutq_runtime import batch, ledger  # noqa: E402
from cutq_runtime.api import RemoveOptions  # noqa: E402
from cutq_runtime.errors import CutqError, ModelError  # noqa: E402

from .conftest import CALIBRATION, davis_dir  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")]

MODEL = "u2netp"
OPTIONS = RemoveOptions()
KEY = batch.settings_key(MODEL, OPTIONS)
RAY = Path(sys.executable).with_name("ray")
START_TIMEOUT = 90.0


# --- the cluster: only processes this module started, found by ancestry, are ever signalled ---------------------


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                tree[int(stat.rsplit(")", 1)[1].split()[1])].append(int(entry))
    return tree


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class Cluster:
    """A head node (2 CPUs) and a worker node (1 CPU), each a `ray start --block` process in its own session."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: list[subprocess.Popen] = []
        self.known: set[int] = set()  # every descendant seen, so orphans are killed too
        # TMPDIR: the engine's per-node model copies land in `root` too. No token auth on this throwaway cluster:
        # Ray reads RAY_AUTH_MODE when it is imported, so this test process could not be switched to it afterwards.
        self.env = {**os.environ, "TMPDIR": str(root), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
        self.env.pop("RAY_ADDRESS", None)

    def start(self) -> None:
        common = ["--block", "--disable-usage-stats"]
        head = [str(RAY), "start", "--head", "--port", str(self.port), "--num-cpus", "2", "--temp-dir", str(self.root),
                "--include-dashboard", "false", *common]
        self.nodes.append(self._spawn(head, "head.log"))
        self._wait(nodes=1)
        worker = [str(RAY), "start", "--address", self.address, "--num-cpus", "1", *common]
        self.nodes.append(self._spawn(worker, "worker.log"))
        self._wait(nodes=2)

    def _spawn(self, argv: list[str], log: str) -> subprocess.Popen:
        with open(self.root / log, "wb") as out:
            return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)

    def _wait(self, nodes: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if any(node.poll() is not None for node in self.nodes):
                break
            with contextlib.suppress(Exception):
                ray.init(address=self.address, logging_level="ERROR")
                try:
                    if sum(1 for node in ray.nodes() if node["Alive"]) >= nodes:
                        return
                finally:
                    ray.shutdown()
            time.sleep(1)
        logs = "\n".join((self.root / name).read_text(errors="replace")[-2000:] for name in ("head.log", "worker.log")
                         if (self.root / name).exists())
        raise RuntimeError(f"the Ray test cluster did not come up with {nodes} node(s):\n{logs}")

    def processes(self) -> list[int]:
        tree, found, todo = _children(), [], [node.pid for node in self.nodes]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo += tree.get(pid, [])
        self.known.update(found)
        return found

    def map_workers(self) -> list[int]:
        """Ray Data's actor processes (one per `_CutWorker`), on both nodes."""
        return [pid for pid in self.processes() if _title(pid).startswith("ray::MapWorker")]

    def stop(self) -> None:
        self.processes()
        for pid in sorted(self.known):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for node in self.nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.wait(10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="cqr-", dir="/tmp"))  # short: Ray's unix socket paths must stay < 108 bytes
    saved = os.environ.pop("RAY_ADDRESS", None)  # run(address=None) must start its own instance, not join one
    node = Cluster(root)
    try:
        node.start()
        yield node
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        node.stop()
        shutil.rmtree(root, ignore_errors=True)
        if saved is not None:
            os.environ["RAY_ADDRESS"] = saved


# --- photos and the local engine's reference outputs -----------------------------------------------------------------


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    """`small`: the 4 bundled photos and 12 davis-val frames; `large`: those and 20 more frames."""
    davis = davis_dir()
    frames = sorted((davis / "images").glob("*.jpg")) if davis else []
    if len(frames) < 32:
        pytest.skip("davis-val photos not found (expected ../shared/data/davis-val or $CUTQ_DAVIS)")
    root = tmp_path_factory.mktemp("photos")
    sets = {"small": [*sorted(CALIBRATION.glob("*.[pj]*g")), *frames[:12]], "large": []}
    sets["large"] = [*sets["small"], *frames[12:32]]
    folders = {}
    for name, files in sets.items():
        folders[name] = root / name
        folders[name].mkdir()
        for file in files:
            shutil.copy(file, folders[name] / file.name)
    return folders


@pytest.fixture(scope="module")
def reference(photos, u2netp, tmp_path_factory) -> dict[str, bytes]:
    """Every output of the large set, by the local engine (`batch.run`), by file name."""
    out = tmp_path_factory.mktemp("local")
    result = batch.run(batch.plan(batch.expand_inputs([str(photos["large"])]), None, str(out)), u2netp, OPTIONS)
    assert not result.failed
    return {path.name: path.read_bytes() for path in out.glob("*.png")}


def _config(cluster: Cluster, **kwargs) -> ray_engine.RayConfig:
    return ray_engine.RayConfig(**{"address": cluster.address, **kwargs})


def _done_lines(out: Path) -> collections.Counter:
    lines = (out / ledger.LEDGER_NAME).read_text().splitlines()
    return collections.Counter(record["source"] for record in map(json.loads, lines) if record["status"] == "done")


def _check_outputs(out: Path, jobs: list[batch.Job], reference: dict[str, bytes]) -> None:
    """Each job's output is the local engine's, byte for byte; no temp file and no other file is left."""
    assert sorted(p.name for p in out.iterdir()) == sorted([ledger.LEDGER_NAME, *(Path(j.target).name for j in jobs)])
    for job in jobs:
        assert Path(job.target).read_bytes() == reference[Path(job.target).name], job.target


# --- the tests ----------------------------------------------------------------------------------------------------------


def test_outputs_equal_the_local_engine(cluster, photos, reference, tmp_path):
    out = tmp_path / "out"
    jobs = batch.plan(batch.expand_inputs([str(photos["small"])]), None, str(out))
    seen: list[tuple[batch.Job, str | None]] = []
    book = ledger.Ledger(out, KEY)
    result = ray_engine.run(jobs, MODEL, OPTIONS, _config(cluster), book, on_result=lambda job, error: seen.append((job, error)))
    book.close()
    assert not ray.is_initialized()  # run() joined the cluster and left it
    assert (set(result.done), result.failed, result.skipped) == (set(jobs), [], [])
    assert len(seen) == len(jobs) and set(seen) == {(job, None) for job in jobs}
    _check_outputs(out, jobs, reference)
    assert set(_done_lines(out).values()) == {1}

    again = ledger.Ledger(out, KEY)  # a rerun finds everything finished and does not even start Ray
    rerun = ray_engine.run(jobs, MODEL, OPTIONS, _config(cluster, address="127.0.0.1:1"), again)
    again.close()
    assert (rerun.done, rerun.failed, rerun.skipped) == ([], [], jobs)


def test_a_killed_worker_is_replaced_and_every_output_committed_once(cluster, photos, reference, tmp_path):
    out = tmp_path / "out"
    jobs = batch.plan(batch.expand_inputs([str(photos["large"])]), None, str(out))
    killed: list[int] = []

    def kill_a_worker(job: batch.Job, error: str | None) -> None:
        if not killed:  # at the first result the other actors are mid-batch, with batches queued behind
            workers = cluster.map_workers()
            assert workers, "no Ray Data actor process found"
            os.kill(workers[0], signal.SIGKILL)
            killed.append(workers[0])

    book = ledger.Ledger(out, KEY)
    result = ray_engine.run(jobs, MODEL, OPTIONS, _config(cluster), book, on_result=kill_a_worker)
    book.close()
    assert killed and not Path(f"/proc/{killed[0]}").exists()
    assert (set(result.done), result.failed, result.skipped) == (set(jobs), [], [])
    assert _done_lines(out) == collections.Counter({job.source: 1 for job in jobs})
    _check_outputs(out, jobs, reference)


DRIVER = """
import json, sys
from cutq.engines import ray_engine
from cutq_runtime import batch, ledger
from cutq_runtime.api import RemoveOptions
src, out, address = sys.argv[1:]
jobs = batch.plan(batch.expand_inputs([src]), None, out)
book = ledger.Ledger(out, batch.settings_key("u2netp", RemoveOptions()))
result = ray_engine.run(jobs, "u2netp", RemoveOptions(), ray_engine.RayConfig(address=address or None, actors=2), book)
print(json.dumps({"done": [j.source for j in result.done], "failed": {j.source: e for j, e in result.failed}}))
"""


def test_a_killed_driver_resumes_without_doing_anything_twice(cluster, photos, reference, tmp_path):
    out = tmp_path / "out"
    jobs = batch.plan(batch.expand_inputs([str(photos["large"])]), None, str(out))
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(photos["large"]), str(out), cluster.address],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while len(list(out.glob("*.png"))) < 6 and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert driver.poll() is None, f"the driver ended before it was killed: {driver.stderr.read().decode()[-3000:]}"
        driver.send_signal(signal.SIGKILL)
        driver.wait(30)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(30)
        driver.stderr.close()
    deadline = time.monotonic() + 60  # Ray ends the dead driver's actors; a rerun while they still write would race
    while cluster.map_workers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not cluster.map_workers(), "the killed driver's actors are still running"
    before = _done_lines(out)
    assert 6 <= len(before) < len(jobs) and set(before.values()) == {1}

    book = ledger.Ledger(out, KEY)
    result = ray_engine.run(jobs, MODEL, OPTIONS, _config(cluster), book)
    book.close()
    assert {job.source for job in result.skipped} == set(before)
    assert collections.Counter(result.skipped + result.done) == collections.Counter(jobs) and not result.failed
    assert not {job.source for job in result.done} & set(before)  # nothing done twice
    assert _done_lines(out) == collections.Counter({job.source: 1 for job in jobs})
    _check_outputs(out, jobs, reference)


def test_bad_files_are_reported_like_the_local_engine(cluster, u2netp, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("chelsea.png", "coffee.png", "rocket.jpg"):
        shutil.copy(CALIBRATION / name, src / name)
    (src / "empty.png").write_bytes(b"")
    jpeg = (CALIBRATION / "rocket.jpg").read_bytes()
    (src / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (src / "notes.png").write_text("not an image at all\n")
    # No address: a private local Ray instance, started and stopped by run() itself. In a process of its own: Ray's
    # local start switches its process to token auth, which this test cluster (and later tests) do not use.
    # TMPDIR: Ray's session folder and the model copy go to a short folder of our own, removed afterwards.
    scratch = tempfile.mkdtemp(prefix="cqr-", dir="/tmp")
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "TMPDIR": scratch}
    try:
        driver = subprocess.run([sys.executable, "-c", DRIVER, str(src), str(tmp_path / "out"), ""], capture_output=True,
                                text=True, timeout=180, env=env)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    assert driver.returncode == 0, driver.stderr[-3000:]
    result = json.loads(driver.stdout.splitlines()[-1])
    local = batch.run(batch.plan(batch.expand_inputs([str(src)]), None, str(tmp_path / "local")), u2netp, OPTIONS)

    failed = {Path(source).name: error for source, error in result["failed"].items()}
    assert set(failed) == {"empty.png", "truncated.jpg", "notes.png"}
    assert failed == {Path(job.source).name: error for job, error in local.failed}  # the same reasons, word for word
    assert sorted(Path(source).name for source in result["done"]) == ["chelsea.png", "coffee.png", "rocket.jpg"]
    for name in ("chelsea.png", "coffee.png", "rocket.png"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == sorted([ledger.LEDGER_NAME, "chelsea.png", "coffee.png", "rocket.png"])
    records = [json.loads(line) for line in (tmp_path / "out" / ledger.LEDGER_NAME).read_text().splitlines()]
    assert sorted(Path(r["source"]).name for r in records if r["status"] == "failed") == sorted(failed)


def test_an_image_that_kills_every_worker_is_reported_and_the_rest_written(cluster, photos, reference, tmp_path,
                                                                            monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    names = sorted(p.name for p in photos["small"].iterdir())[:5]
    for name in names:
        shutil.copy(photos["small"] / name, src / name)
    shutil.copy(photos["small"] / names[0], src / "poison.png")

    class Crashing(ray_engine._CutWorker):  # defined here, so it travels by value: the workers run this __call__
        def __call__(self, rows):
            if any("poison" in str(source) for source in rows["source"]):
                os._exit(1)  # a hard crash, as a segfault or the kernel's OOM killer would
            return super().__call__(rows)

    monkeypatch.setattr(ray_engine, "_CutWorker", Crashing)
    out = tmp_path / "out"
    jobs = batch.plan(batch.expand_inputs([str(src)]), None, str(out))
    book = ledger.Ledger(out, KEY)
    result = ray_engine.run(jobs, MODEL, OPTIONS, _config(cluster, max_task_retries=1, batch_size=3), book)
    book.close()
    assert [(Path(job.source).name, error) for job, error in result.failed] == [
        ("poison.png", f"{src / 'poison.png'}: its worker process died on each of 2 tries (crash or out of memory); not written")]
    assert sorted(Path(job.source).name for job in result.done) == names  # its batch-mates were retried one by one
    _check_outputs(out, [job for job in jobs if job.source != str(src / "poison.png")], reference)


def test_an_actor_that_cannot_load_the_model_ends_the_run_with_the_reason(cluster, photos, tmp_path, monkeypatch):
    class Refusing(ray_engine._CutWorker):
        def __init__(self, *args):
            raise ModelError("u2netp.onnx: refused on this worker's CPU (strict CPU check)")

    monkeypatch.setattr(ray_engine, "_CutWorker", Refusing)
    jobs = batch.plan(batch.expand_inputs([str(photos["small"])]), None, str(tmp_path / "out"))
    book = ledger.Ledger(tmp_path / "out", KEY)
    with pytest.raises(CutqError, match=r"after 0 of 16 images .*: ModelError: u2netp.onnx: refused on this worker's CPU"):
        ray_engine.run(jobs, MODEL, OPTIONS, _config(cluster), book)
    book.close()
    assert not ray.is_initialized()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [ledger.LEDGER_NAME]


def test_stdin_is_refused_and_a_missing_ray_named(tmp_path, monkeypatch):
    with pytest.raises(CutqError, match="stdin/stdout"):
        ray_engine.run([batch.Job("-", str(tmp_path / "a.png"))], MODEL, OPTIONS, ray_engine.RayConfig(), None)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(CutqError, match=r'pip install "cutq\[ray\]"'):
        ray_engine.run([batch.Job(str(CALIBRATION / "chelsea.png"), str(tmp_path / "a.png"))], MODEL, OPTIONS,
                       ray_engine.RayConfig(), None)
