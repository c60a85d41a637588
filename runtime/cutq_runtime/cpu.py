"""Whether this CPU computes a variant's INT8 kernels exactly, judged from the claim in its manifest.

On x86 without VNNI (SSE, AVX2, AVX-512BW) ONNX Runtime multiplies u8 activations by s8 weights with
VPMADDUBSW, which adds each pair of products into a saturating signed 16-bit value: 255*127*2 overflows,
so a model with full-range 8-bit weights can give wrong masks there. With every |weight| <= 64
(255*64*2 = 32640) no pair can saturate on any CPU. `cutq quantize` writes such 7-bit weights by default and
records the fact under the manifest's "cpu" key; ARM64, and x86 with AVX-512 VNNI, AVX-VNNI or AMX,
accumulate in 32 bits and run full 8-bit weights exactly too.

Reading the host costs one short read of /proc/cpuinfo (or one `sysctl` on macOS), done only when a
variant with 8-bit weights is loaded, and cached for the process.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import EllipsisType
from typing import Any

PORTABLE_MAX_ABS = 64
"""The largest |int8 weight| no u8 x s8 pair can saturate a 16-bit sum with: 255 * 64 * 2 = 32640 <= 32767."""

FEATURES_ENV = "CUTQ_CPU_FEATURES"
CPUINFO = Path("/proc/cpuinfo")
RELEVANT = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8",
            "asimd", "asimddp", "i8mm")
EXACT_X86 = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
ARM64 = frozenset({"aarch64", "arm64"})
X86 = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})
_ARM_PARTS = {"0xd03": "Cortex-A53", "0xd05": "Cortex-A55", "0xd08": "Cortex-A72", "0xd0b": "Cortex-A76",
              "0xd0c": "Neoverse-N1", "0xd40": "Neoverse-V1", "0xd49": "Neoverse-N2", "0xd4f": "Neoverse-V2"}
_MAC_FLAGS = {"sse4.1": "sse4_1", "sse4.2": "sse4_2", "avx1.0": "avx", "avx512vnni": "avx512_vnni"}
LABELS = {"any": "any", "vnni-or-arm": "VNNI/ARM", "unknown": "?"}
"""`models list`'s CPUs column for each `portability`; a variant that is not exact here gets "(not here)" and NOT_HERE."""
NOT_HERE = ("may compute wrong masks on this CPU: without VNNI its integer kernels saturate on 8-bit weights; "
            "`cutq quantize` rebuilds with 7-bit weights, exact everywhere")
FIX = "rebuild it with `cutq quantize`, whose default 7-bit weights run exactly on every CPU, or use the FP32 model"


def usable_cores() -> int:
    """Cores this process may run on (its affinity where the OS has one), for sizing worker pools."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def host_features(cpuinfo: str | os.PathLike[str] | None = None) -> frozenset[str] | None:
    """This host's CPU feature flags in Linux's spelling (`avx2`, `avx512_vnni`, `asimddp`), None when unknown.

    `cpuinfo` reads a /proc/cpuinfo-format file instead of the host. Without it, `CUTQ_CPU_FEATURES`
    overrides detection: flags separated by spaces or commas, optionally after `<machine>:`, e.g.
    `x86_64: sse4_2 avx avx2 fma`. It is a hook for tests and for hosts that hide their flags (some VMs)."""
    if cpuinfo is not None:
        return _probe_cpuinfo(Path(cpuinfo))[0]
    override = _override()
    return override[1] if override is not None else _probe()[0]


def host_machine() -> str:
    """`platform.machine()`, or the machine `CUTQ_CPU_FEATURES` names."""
    override = _override()
    return override[0] if override is not None and override[0] else platform.machine()


def describe_host(cpuinfo: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The CPU a variant was built and checked on, for its manifest's `cpu.build_host` (JSON-serialisable).

    Always the detected hardware (or `cpuinfo`): the `CUTQ_CPU_FEATURES` override is not recorded as fact."""
    import onnxruntime

    features, model = _probe_cpuinfo(Path(cpuinfo)) if cpuinfo is not None else _probe()
    return {"machine": platform.machine(), "system": platform.system(), "model": model,
            "flags": sorted(flag for flag in RELEVANT if flag in (features or ())),
            "onnxruntime": onnxruntime.__version__}


def exact_int8(features: Iterable[str] | None, machine: str) -> bool:
    """Whether ONNX Runtime's u8 x s8 kernels never saturate here: ARM64 always, x86 only with AVX-512 VNNI,
    AVX-VNNI or AMX. Other architectures are not known to be exact."""
    arch = machine.lower()
    if arch in ARM64:
        return True
    return arch in X86 and features is not None and not EXACT_X86.isdisjoint(features)


def exact_on(max_abs_weight: int) -> str:
    """The manifest's `cpu.exact_on` for a model whose largest |int8 weight| is `max_abs_weight`."""
    return "any" if max_abs_weight <= PORTABLE_MAX_ABS else "vnni-or-arm"


def portability(manifest: Mapping[str, Any] | None) -> str:
    """Which CPUs a variant runs exactly on: "any" (FP32, or every |weight| <= 64), "vnni-or-arm" (a claim
    of full 8-bit weights) or "unknown" (INT8 made before the claim existed; those used the full 8-bit range).
    A file brought in with `models import` carries no claim and counts as FP32."""
    manifest = manifest or {}
    claim = manifest.get("cpu")
    if claim is None:
        return "unknown" if _quantized(manifest) else "any"
    if not isinstance(claim, Mapping):
        return "unknown"
    top = claim.get("max_abs_weight")
    if isinstance(top, int | float) and not isinstance(top, bool):
        return exact_on(int(top))
    if claim.get("exact_on") == "any":
        return "any"
    return "vnni-or-arm" if "8bit" in (claim.get("weight_range"), claim.get("exact_on")) else "unknown"


def claim_problem(manifest: Mapping[str, Any] | None, path: str | os.PathLike[str],
                  features: Iterable[str] | EllipsisType | None = ..., machine: str | None = None) -> str | None:
    """Why the variant at `path` may compute wrong masks on this host, or None when it runs exactly.

    `features` and `machine` default to this host's (`...` reads them, None means unknown); the host is only
    read when the variant has 8-bit weights."""
    claim = (manifest or {}).get("cpu")
    check = claim.get("check") if isinstance(claim, Mapping) else None
    if isinstance(check, Mapping) and check.get("portable") is False:
        return (f"{path}: on its build host ({_build_model(claim)}) this variant's integer kernels departed from "
                f"its own arithmetic{_figures(check)}, so its masks may be wrong on other CPUs too; {FIX}")
    kind = portability(manifest)
    if kind == "any":
        return None
    found = host_features() if isinstance(features, EllipsisType) else None if features is None else frozenset(features)
    machine = machine or host_machine()
    if exact_int8(found, machine):
        return None
    weights = ("has full 8-bit weights" if kind == "vnni-or-arm"
               else "was quantized before cutq recorded weight ranges, with full 8-bit weights")
    if machine.lower() not in X86:
        return (f"{path}: {weights}, and ONNX Runtime's integer kernels are only known to be exact on ARM64 and on "
                f"x86 with VNNI, not on {machine}: masks may be wrong; {FIX}")
    if found is None:
        return (f"{path}: {weights}, and this CPU's features could not be read to tell whether it has AVX-512 VNNI "
                f"or AVX-VNNI; without them ONNX Runtime's integer kernels saturate and masks may be wrong; {FIX}")
    return (f"{path}: {weights}, and this CPU has no AVX-512 VNNI or AVX-VNNI: ONNX Runtime's integer kernels "
            f"here saturate when adding pairs of u8 x s8 products in 16 bits, so masks may be wrong; {FIX}")


def _quantized(manifest: Mapping[str, Any]) -> bool:
    steps = manifest.get("steps")
    return isinstance(steps, list) and any(isinstance(s, Mapping) and s.get("step") == "quantize" for s in steps)


def _build_model(claim: Mapping[str, Any]) -> str:
    host = claim.get("build_host")
    model = host.get("model") or host.get("machine") if isinstance(host, Mapping) else None
    return str(model or "unrecorded CPU")


def _figures(check: Mapping[str, Any]) -> str:
    ssim = check.get("kernels_vs_arithmetic_ssim_min")
    return f" (SSIM min {ssim})" if isinstance(ssim, int | float) else ""


def _override() -> tuple[str, frozenset[str]] | None:
    """(machine or "", flags) from `CUTQ_CPU_FEATURES`, None when unset."""
    text = os.environ.get(FEATURES_ENV)
    if not text:
        return None
    machine, _, flags = text.rpartition(":")
    return machine.strip(), frozenset(word for word in re.split(r"[\s,]+", flags) if word)


@functools.lru_cache(maxsize=1)
def _probe() -> tuple[frozenset[str] | None, str]:
    """(features, CPU model) of this host, read once per process."""
    system = platform.system()
    if system == "Linux":
        return _probe_cpuinfo(CPUINFO)
    if system == "Darwin":
        return _probe_sysctl()
    return None, platform.processor()


def _probe_cpuinfo(path: Path) -> tuple[frozenset[str] | None, str]:
    try:
        fields = _first_block(path)
    except OSError:
        return None, ""
    flags = fields.get("flags", fields.get("features"))
    features = frozenset(flags.split()) if flags is not None else None
    if fields.get("model name"):
        return features, fields["model name"]
    implementer, part = fields.get("cpu implementer", ""), fields.get("cpu part", "")
    named = _ARM_PARTS.get(part) if implementer == "0x41" else None
    return features, named or (f"CPU implementer {implementer} part {part}" if part else "")


def _first_block(path: Path) -> dict[str, str]:
    """The first processor's fields, keys lower-cased. Every core lists the same flags, and stopping at the
    first blank line keeps the read short on hosts with hundreds of cores."""
    fields: dict[str, str] = {}
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            key, colon, value = line.partition(":")
            if colon:
                fields.setdefault(key.strip().lower(), value.strip())
            elif fields and not line.strip():
                break
    return fields


def _probe_sysctl() -> tuple[frozenset[str] | None, str]:
    """macOS: Intel Macs list their features through sysctl; every Apple silicon Mac has the dot product."""
    model = (_sysctl("machdep.cpu.brand_string") or "").strip()
    if platform.machine() == "arm64":
        return frozenset({"asimd", "asimddp"}), model
    text = _sysctl("machdep.cpu.features", "machdep.cpu.leaf7_features")
    if not text:
        return None, model
    return frozenset(_MAC_FLAGS.get(word, word) for word in text.lower().split()), model


def _sysctl(*names: str) -> str | None:
    try:
        done = subprocess.run(["sysctl", "-n", *names], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout or None
