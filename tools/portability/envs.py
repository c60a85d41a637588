"""The emulated CPUs and what they need: qemu-user-static, and for ARM64 a Debian sysroot plus aarch64 wheels.

Everything downloaded lands in the cache folder (default `.cache/portability/`, git-ignored) and is reused.
The arm64 .debs come through a private apt state inside the cache (no `dpkg --add-architecture` on the host);
the wheels are the host venv's own versions of numpy, onnxruntime and pillow, for manylinux aarch64 and CPython 3.11.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

NETWORK_EXIT = 3  # a registry (Debian apt, PyPI, the model release) could not be reached


class SetupError(Exception):
    """Provisioning failed; the check stops with NETWORK_EXIT and this message."""


@dataclass(frozen=True)
class Cpu:
    name: str
    arch: str  # "x86_64" or "aarch64"
    qemu_cpu: str | None  # None: the host itself
    about: str


CPUS = {
    "native": Cpu("native", "x86_64", None, "this host"),
    "x86-avx2": Cpu("x86-avx2", "x86_64", "Haswell", "x86 AVX2 + FMA, no AVX-512, no VNNI"),
    "x86-sse4.2": Cpu("x86-sse4.2", "x86_64", "Nehalem", "x86 SSE4.2 only (NAS-class)"),
    "arm64-a72": Cpu("arm64-a72", "aarch64", "cortex-a72", "Raspberry Pi 4"),
    "arm64-a76": Cpu("arm64-a76", "aarch64", "cortex-a76", "Raspberry Pi 5"),
}

# /proc/cpuinfo as the boards print it. qemu-user 7.2 passes the host's file through, and onnxruntime's import
# crashes on an x86 cpuinfo under qemu-aarch64; `-L <root>` makes the process read <root>/proc/cpuinfo instead.
_ARM_CORES = {
    "cortex-a72": ("fp asimd evtstrm crc32 cpuid", "0x0", "0xd08", "3", "Raspberry Pi 4 Model B Rev 1.4", "c03114"),
    "cortex-a76": ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp",
                   "0x4", "0xd0b", "1", "Raspberry Pi 5 Model B Rev 1.0", "d04170"),
}

DEBIAN_MIRRORS = ("http://deb.debian.org/debian bookworm main", "http://deb.debian.org/debian-security bookworm-security main")
ARM64_DEBS = ("python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libc6", "libgcc-s1", "libstdc++6",
              "zlib1g", "libexpat1", "libffi8", "libssl3", "libbz2-1.0", "liblzma5", "libcrypt1", "libuuid1")
RUNTIME_WHEELS = ("numpy", "onnxruntime", "pillow")


def run(cmd: list[str], what: str, **kwargs) -> None:
    print(f"+ {' '.join(cmd)}", flush=True)
    if subprocess.run(cmd, check=False, **kwargs).returncode != 0:
        raise SetupError(f"{what} failed (registry unreachable?); see the output above")


def qemu_binary(arch: str) -> str:
    return f"qemu-{arch}-static"


def ensure_qemu() -> str:
    """qemu-user-static on PATH, installed with apt-get when missing (needs root); returns its version line."""
    if platform.machine() != "x86_64":
        sys.exit(f"portability: the check runs on an x86_64 host, this is {platform.machine()}")
    if not all(shutil.which(qemu_binary(arch)) for arch in ("x86_64", "aarch64")):
        if os.geteuid() != 0:
            raise SetupError("qemu-user-static is missing; install it (apt-get install qemu-user-static) or run as root")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run(["apt-get", "--error-on=any", "update"], "apt-get update", env=env)
        run(["apt-get", "install", "-y", "--no-install-recommends", "qemu-user-static"], "installing qemu-user-static", env=env)
    out = subprocess.run([qemu_binary("x86_64"), "--version"], capture_output=True, text=True, check=True).stdout
    return out.splitlines()[0]


def _apt(cache: Path) -> list[str]:
    """apt-get options for a private arm64 apt state in the cache: the host's apt and dpkg stay untouched."""
    state = cache / "apt"
    for sub in ("lists/partial", "archives/partial"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    (state / "status").touch()
    keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
    (state / "sources.list").write_text("".join(f"deb [arch=arm64 signed-by={keyring}] {m}\n" for m in DEBIAN_MIRRORS))
    options = {"Dir::State": state, "Dir::State::Lists": state / "lists", "Dir::State::status": state / "status",
               "Dir::Cache": state, "Dir::Cache::archives": state / "archives", "Dir::Etc::SourceList": state / "sources.list",
               "Dir::Etc::SourceParts": "/dev/null", "APT::Architecture": "arm64", "APT::Architectures": "arm64",
               "Acquire::Languages": "none", "APT::Sandbox::User": "root"}
    return [arg for key, value in options.items() for arg in ("-o", f"{key}={value}")]


def arm64_sysroot(cache: Path) -> Path:
    """Debian bookworm's arm64 python3.11 and the libraries the wheels load, unpacked with `dpkg -x`."""
    sysroot, debs = cache / "arm64-sysroot", cache / "arm64-debs"
    if (sysroot / "usr/bin/python3.11").is_file():
        return sysroot
    debs.mkdir(parents=True, exist_ok=True)
    apt = _apt(cache)
    run(["apt-get", *apt, "--error-on=any", "update"], "apt-get update (arm64 package lists from deb.debian.org)")
    run(["apt-get", *apt, "download", *ARM64_DEBS], "apt-get download of the arm64 packages", cwd=debs)
    partial = sysroot.with_name(sysroot.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg", "-x", str(deb), str(partial)], check=True)
    # Empty dist-packages, so the redirected lookups never fall through to the host's x86 packages.
    for folder in ("usr/lib/python3/dist-packages", "usr/local/lib/python3.11/dist-packages"):
        (partial / folder).mkdir(parents=True, exist_ok=True)
    partial.rename(sysroot)
    return sysroot


def arm64_root(cache: Path, sysroot: Path, qemu_cpu: str) -> Path:
    """A per-CPU `-L` root: the shared sysroot through symlinks plus that board's proc/cpuinfo."""
    root = cache / "arm64-roots" / qemu_cpu
    (root / "proc").mkdir(parents=True, exist_ok=True)
    for top in ("etc", "lib", "usr"):
        if not (root / top).is_symlink():
            (root / top).symlink_to(sysroot / top)
    features, variant, part, revision, model, board = _ARM_CORES[qemu_cpu]
    core = (f"BogoMIPS\t: 108.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\nCPU architecture: 8\n"
            f"CPU variant\t: {variant}\nCPU part\t: {part}\nCPU revision\t: {revision}\n\n")
    text = "".join(f"processor\t: {i}\n{core}" for i in range(4)) + f"Revision\t: {board}\nModel\t\t: {model}\n"
    (root / "proc" / "cpuinfo").write_text(text)
    return root


def pinned_wheels() -> list[str]:
    """The runtime's three dependencies at the versions the native side runs (this venv)."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in RUNTIME_WHEELS]


def arm64_site_packages(cache: Path) -> Path:
    """The aarch64 wheels of the runtime's dependencies, installed with pip into a target folder."""
    target, pins = cache / "arm64-site-packages", pinned_wheels()
    stamp = target / ".portability-pins"
    if stamp.is_file() and stamp.read_text() == " ".join(pins):
        return target
    shutil.rmtree(target, ignore_errors=True)
    run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--only-binary=:all:",
         "--platform", "manylinux_2_28_aarch64", "--platform", "manylinux2014_aarch64", "--implementation", "cp",
         "--python-version", "3.11", "--target", str(target), *pins], "pip install of the aarch64 wheels (PyPI)")
    stamp.write_text(" ".join(pins))
    return target


def command(cpu: Cpu, cache: Path, repo: Path) -> tuple[list[str], dict[str, str]]:
    """How to start the worker on `cpu`: the argv prefix and the environment."""
    env = {**os.environ, "PYTHONPATH": str(repo / "runtime"), "OMP_NUM_THREADS": "1"}
    worker = str(repo / "tools" / "portability" / "worker.py")
    if cpu.qemu_cpu is None:
        return [sys.executable, "-s", worker], env
    if cpu.arch == "x86_64":  # the venv's own interpreter and packages, only the CPU changes
        return [qemu_binary("x86_64"), "-cpu", cpu.qemu_cpu, sys.executable, "-s", worker], env
    sysroot = arm64_sysroot(cache)
    env["PYTHONPATH"] = f"{arm64_site_packages(cache)}:{repo / 'runtime'}"
    root = arm64_root(cache, sysroot, cpu.qemu_cpu)
    return [qemu_binary("aarch64"), "-L", str(root), "-cpu", cpu.qemu_cpu, str(sysroot / "usr/bin/python3.11"), "-s", worker], env


def footprint(cache: Path, repo: Path) -> list[tuple[str, str, str]]:
    """`du -sh` of the aarch64 install per package and in total, with pip's bytecode and without (__pycache__)."""
    target, runtime = arm64_site_packages(cache), repo / "runtime" / "cutq_runtime"

    def du(*paths: Path) -> tuple[str, str]:
        sizes = []
        for exclude in ([], ["--exclude=__pycache__"]):
            out = subprocess.run(["du", "-shc", *exclude, *map(str, paths)], capture_output=True, text=True, check=True)
            sizes.append(out.stdout.splitlines()[-1].split()[0])
        return sizes[0], sizes[1]

    groups = {"numpy": ["numpy", "numpy.libs", "numpy-*"], "onnxruntime": ["onnxruntime", "onnxruntime-*"],
              "pillow": ["PIL", "pillow.libs", "pillow-*"]}
    rows = [(name, *du(*[p for pattern in patterns for p in target.glob(pattern)])) for name, patterns in groups.items()]
    grouped = {p for patterns in groups.values() for pattern in patterns for p in target.glob(pattern)}
    others = sorted(p for p in target.iterdir() if p not in grouped and p.name != ".portability-pins")
    names = ", ".join(p.name for p in others if "dist-info" not in p.name)
    rows.append((f"onnxruntime's dependencies ({names})", *du(*others)))
    rows.append(("cutq_runtime (runtime/cutq_runtime)", *du(runtime)))
    rows.append(("total", *du(target, runtime)))
    return rows
