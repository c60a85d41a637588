"""The CPU claim of INT8 variants: reading real-format /proc/cpuinfo, judging a manifest's claim against a host,
warning or refusing on load, and the CPUs column of `models list` in both command lines."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

from cutq_runtime import ModelError, cpu, new_session
from cutq_runtime.errors import CutqWarning
from cutq_runtime.models import list_models

from .conftest import CALIBRATION
from .tiny import save_tiny

CLIS = ("cutq", "runtime")
NO_VNNI = "x86_64: sse4_2 avx avx2 fma avx512f avx512bw"  # a Skylake-SP: AVX-512BW but no VNNI
VNNI = "x86_64: sse4_2 avx avx2 fma avx512f avx512bw avx512_vnni"


def _x86(vendor: str, family: int, model: int, name: str, flags: str) -> str:
    """Two processor blocks as Linux writes them (only the first should be read)."""
    block = (f"vendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\nmodel name\t: {name}\nstepping\t: 0\n"
             f"cpu MHz\t\t: 3800.000\ncache size\t: 512 KB\nfpu\t\t: yes\ncpuid level\t: 16\nwp\t\t: yes\n"
             f"flags\t\t: {' '.join(flags.split())}\nbogomips\t: 7600.00\nclflush size\t: 64\n"
             f"address sizes\t: 48 bits physical, 48 bits virtual\npower management: ts ttp tm hwpstate\n\n")
    return f"processor\t: 0\n{block}processor\t: 1\n{block}"


def _arm(part: str, features: str, variant: str = "0x0", board: str = "") -> str:
    block = (f"BogoMIPS\t: 108.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\nCPU architecture: 8\n"
             f"CPU variant\t: {variant}\nCPU part\t: {part}\nCPU revision\t: 3\n\n")
    return f"processor\t: 0\n{block}processor\t: 1\n{block}Hardware\t: BCM2835\nModel\t\t: {board}\n"


ZEN3_FLAGS = """fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht syscall
    nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl nonstop_tsc cpuid extd_apicid aperfmperf rapl pni
    pclmulqdq monitor ssse3 fma cx16 sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand lahf_lm cmp_legacy svm
    extapic cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw ibs skinit wdt tce topoext perfctr_core perfctr_nb bpext
    perfctr_llc mwaitx cpb cat_l3 cdp_l3 hw_pstate ssbd mba ibrs ibpb stibp vmmcall fsgsbase bmi1 avx2 smep bmi2 erms
    invpcid cqm rdt_a rdseed adx smap clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 xsaves cqm_llc cqm_occup_llc
    cqm_mbm_total cqm_mbm_local clzero irperf xsaveerptr rdpru wbnoinvd arat npt lbrv svm_lock nrip_save tsc_scale
    vmcb_clean flushbyasid decodeassists pausefilter pfthreshold avic v_vmsave_vmload vgif v_spec_ctrl umip pku ospke
    vaes vpclmulqdq rdpid overflow_recov succor smca fsrm"""
ZEN4_FLAGS = ZEN3_FLAGS.replace("sha_ni", "avx512f avx512dq avx512ifma avx512cd sha_ni avx512bw avx512vl").replace(
    "vaes vpclmulqdq", "avx512vbmi avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni avx512_bitalg avx512_vpopcntdq")
ALDER_FLAGS = """fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush dts acpi mmx fxsr sse sse2
    ss ht tm pbe syscall nx pdpe1gb rdtscp lm constant_tsc art arch_perfmon pebs bts rep_good nopl xtopology nonstop_tsc
    cpuid aperfmperf tsc_known_freq pni pclmulqdq dtes64 monitor ds_cpl vmx smx est tm2 ssse3 sdbg fma cx16 xtpr pdcm
    pcid sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand lahf_lm abm 3dnowprefetch
    cpuid_fault epb ssbd ibrs ibpb stibp ibrs_enhanced fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms invpcid rdseed adx
    smap clflushopt clwb intel_pt sha_ni xsaveopt xsavec xgetbv1 xsaves split_lock_detect avx_vnni dtherm ida arat pln
    pts hwp hwp_notify hwp_act_window hwp_epp hwp_pkg_req hfi umip pku ospke waitpkg gfni vaes vpclmulqdq rdpid movdiri
    movdir64b fsrm md_clear serialize arch_lbr ibt flush_l1d arch_capabilities"""
SKYLAKE_FLAGS = ALDER_FLAGS.replace("sha_ni", "avx512f avx512dq avx512cd avx512bw avx512vl").replace("avx_vnni ", "")

HOSTS = {  # name: (cpuinfo text, machine, exact with 8-bit weights, model, relevant flags)
    "zen3": (_x86("AuthenticAMD", 25, 33, "AMD Ryzen 7 5800X 8-Core Processor", ZEN3_FLAGS), "x86_64", False,
             "AMD Ryzen 7 5800X 8-Core Processor", ["avx", "avx2", "fma", "sse4_2"]),
    "skylake": (_x86("GenuineIntel", 6, 85, "Intel(R) Xeon(R) Gold 6140 CPU @ 2.30GHz", SKYLAKE_FLAGS), "x86_64", False,
                "Intel(R) Xeon(R) Gold 6140 CPU @ 2.30GHz", ["avx", "avx2", "avx512bw", "avx512f", "fma", "sse4_2"]),
    "zen4": (_x86("AuthenticAMD", 25, 97, "AMD Ryzen 9 7950X 16-Core Processor", ZEN4_FLAGS), "x86_64", True,
             "AMD Ryzen 9 7950X 16-Core Processor", ["avx", "avx2", "avx512_vnni", "avx512bw", "avx512f", "fma", "sse4_2"]),
    "alderlake": (_x86("GenuineIntel", 6, 151, "12th Gen Intel(R) Core(TM) i7-12700K", ALDER_FLAGS), "x86_64", True,
                  "12th Gen Intel(R) Core(TM) i7-12700K", ["avx", "avx2", "avx_vnni", "fma", "sse4_2"]),
    "a72": (_arm("0xd08", "fp asimd evtstrm crc32 cpuid", board="Raspberry Pi 4 Model B Rev 1.4"), "aarch64", True,
            "Cortex-A72", ["asimd"]),
    "a76": (_arm("0xd0b", "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop "
                 "asimddp", variant="0x4", board="Raspberry Pi 5 Model B Rev 1.0"), "aarch64", True,
            "Cortex-A76", ["asimd", "asimddp"]),
}

CLAIM_7BIT = {"weight_range": "7bit", "max_abs_weight": 64, "exact_on": "any",
              "check": {"kernels_vs_arithmetic_ssim_min": 0.9995, "portable": True}}
CLAIM_8BIT = {"weight_range": "8bit", "max_abs_weight": 127, "exact_on": "vnni-or-arm",
              "build_host": {"model": "AMD Ryzen 9 7950X 16-Core Processor"}, "check": {"portable": True}}
INT8_STEPS = [{"step": "calibrate"}, {"step": "quantize", "format": "QDQ"}]


@pytest.fixture
def cpuinfo(tmp_path: Path):
    def write(host: str) -> Path:
        path = tmp_path / f"cpuinfo-{host}"
        path.write_text(HOSTS[host][0])
        return path
    return write


@pytest.mark.parametrize("host", list(HOSTS))
def test_real_cpuinfo_gives_the_features_and_the_verdict(host: str, cpuinfo) -> None:
    _, machine, exact, model, relevant = HOSTS[host]
    features = cpu.host_features(cpuinfo(host))
    assert features is not None and ("avx2" in features) == (machine == "x86_64")
    assert cpu.exact_int8(features, machine) is exact
    described = cpu.describe_host(cpuinfo(host))
    assert described["model"] == model and described["flags"] == relevant
    assert json.loads(json.dumps(described)) == described


def test_unknown_features_and_other_machines() -> None:
    assert not cpu.exact_int8(None, "x86_64") and not cpu.exact_int8(None, "AMD64")
    assert cpu.exact_int8(None, "arm64") and cpu.exact_int8(frozenset(), "aarch64")
    assert not cpu.exact_int8({"avx512_vnni"}, "ppc64le")
    assert cpu.exact_int8({"amx_int8"}, "x86_64")
    assert cpu.host_features(Path("/nonexistent/cpuinfo")) is None


def test_the_override_names_features_and_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cpu.FEATURES_ENV, "x86_64: avx2, fma avx512_vnni")
    assert cpu.host_features() == {"avx2", "fma", "avx512_vnni"} and cpu.host_machine() == "x86_64"
    monkeypatch.setenv(cpu.FEATURES_ENV, "asimd asimddp")
    assert cpu.host_features() == {"asimd", "asimddp"}


@pytest.mark.parametrize("host", list(HOSTS))
def test_claims_against_each_host(host: str, cpuinfo) -> None:
    _, machine, exact, _, _ = HOSTS[host]
    features = cpu.host_features(cpuinfo(host))
    path = Path("/models/u2netp-int8.onnx")

    def problem(manifest: dict | None) -> str | None:
        return cpu.claim_problem(manifest, path, features=features, machine=machine)

    assert problem(None) is None
    assert problem({"steps": [{"step": "prune"}]}) is None  # FP32
    assert problem({"cpu": CLAIM_7BIT, "steps": INT8_STEPS}) is None
    assert problem({"cpu": {"exact_on": "any"}}) is None
    for manifest in ({"cpu": CLAIM_8BIT, "steps": INT8_STEPS}, {"steps": INT8_STEPS}):
        message = problem(manifest)
        if exact:
            assert message is None
            continue
        assert message is not None and str(path) in message
        assert "no AVX-512 VNNI or AVX-VNNI" in message and "saturate" in message and "masks may be wrong" in message
        assert "`cutq quantize`" in message and "7-bit" in message and "FP32" in message
    assert "before cutq recorded" in (cpu.claim_problem({"steps": INT8_STEPS}, path, features=set(), machine="x86_64") or "")


def test_unreadable_host_and_a_failed_check() -> None:
    message = cpu.claim_problem({"cpu": CLAIM_8BIT}, "m.onnx", features=None, machine="x86_64")
    assert message is not None and "could not be read" in message
    departed = {**CLAIM_7BIT, "build_host": {"model": "AMD EPYC 9654"},
                "check": {"kernels_vs_arithmetic_ssim_min": 0.93, "portable": False}}
    message = cpu.claim_problem({"cpu": departed}, "m.onnx", features={"avx512_vnni"}, machine="x86_64")
    assert message is not None and "AMD EPYC 9654" in message and "departed from its own arithmetic" in message
    assert cpu.portability({"cpu": CLAIM_8BIT}) == "vnni-or-arm" and cpu.portability({"steps": INT8_STEPS}) == "unknown"
    assert cpu.exact_on(64) == "any" and cpu.exact_on(65) == "vnni-or-arm"


def _variant(cache: Path, name: str, claim: dict | None) -> Path:
    """A tiny U²-Net-shaped model (8x8 input) in the cache with an INT8 manifest carrying `claim`."""
    cache.mkdir(exist_ok=True)
    path = save_tiny(cache / f"{name}.onnx")
    manifest = {"name": name, "description": f"tiny {name}", "steps": INT8_STEPS,
                "input": {"size": [8, 8], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
                **({"cpu": claim} if claim else {})}
    path.with_suffix(".json").write_text(json.dumps(manifest))
    return path


def test_loading_warns_refuses_or_stays_silent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    full, seven = _variant(cache, "tiny8", CLAIM_8BIT), _variant(cache, "tiny7", CLAIM_7BIT)
    monkeypatch.delenv("CUTQ_STRICT_CPU", raising=False)
    monkeypatch.setenv(cpu.FEATURES_ENV, NO_VNNI)
    with pytest.warns(CutqWarning, match="no AVX-512 VNNI") as caught:
        assert new_session("tiny8", cache_dir=cache).name == "tiny8"
    assert len(caught) == 1 and str(full) in str(caught[0].message)
    with pytest.raises(ModelError, match="refused"):
        new_session("tiny8", cache_dir=cache, strict_cpu=True)
    monkeypatch.setenv("CUTQ_STRICT_CPU", "1")
    with pytest.raises(ModelError, match=str(full)):
        new_session("tiny8", cache_dir=cache)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert new_session(seven).name == "tiny7"  # 7-bit: exact everywhere, even strict
        monkeypatch.setenv(cpu.FEATURES_ENV, VNNI)
        assert new_session("tiny8", cache_dir=cache).name == "tiny8"  # VNNI host: exact


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


def _run(cli: str, *args: str, features: str) -> Ran:
    """The stdlib CLI in its own process; `cutq` in this one through Typer's runner (the same code, without the
    two seconds its imports take per process)."""
    env = {"COLUMNS": "200", cpu.FEATURES_ENV: features, "CUTQ_STRICT_CPU": None}
    if cli == "cutq":
        from typer.testing import CliRunner

        from cutq.cli import app

        result = CliRunner().invoke(app, list(args), env=env)
        return Ran(result.exit_code, result.stdout, result.stderr)
    full = {**os.environ, **env}
    full.pop("CUTQ_STRICT_CPU")
    proc = subprocess.run([sys.executable, "-m", "cutq_runtime", *args], capture_output=True, text=True, check=False, env=full)
    return Ran(proc.returncode, proc.stdout, proc.stderr)


def _row(listing: str, name: str) -> str:
    """The line of `models list` output (plain or a rich table) for one model."""
    return next(line for line in listing.splitlines() if re.match(rf"(│ )?{re.escape(name)}\s", line))


def test_list_models_reports_portability(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    for name, claim in (("tiny7", CLAIM_7BIT), ("tiny8", CLAIM_8BIT), ("tiny-old", None)):
        _variant(cache, name, claim)
    monkeypatch.setenv(cpu.FEATURES_ENV, NO_VNNI)
    assert {i.name: (i.cpus, i.exact_here) for i in list_models(cache) if i.kind == "variant"} == {
        "tiny-old": ("unknown", False), "tiny7": ("any", True), "tiny8": ("vnni-or-arm", False)}
    monkeypatch.setenv(cpu.FEATURES_ENV, "aarch64: fp asimd")
    assert all(i.exact_here for i in list_models(cache))


@pytest.mark.parametrize("cli", CLIS)
def test_models_list_shows_the_cpus_column(cli: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    for name, claim in (("tiny7", CLAIM_7BIT), ("tiny8", CLAIM_8BIT), ("tiny-old", None)):
        _variant(cache, name, claim)
    listing = _run(cli, "models", "list", "--cache-dir", str(cache), features=NO_VNNI).stdout
    assert "CPUs" in listing and "(not here) may compute wrong masks on this CPU:" in listing
    assert " any " in _row(listing, "tiny7") and "not here" not in _row(listing, "tiny7")
    assert "VNNI/ARM (not here)" in _row(listing, "tiny8") and "? (not here)" in _row(listing, "tiny-old")
    listing = _run(cli, "models", "list", "--cache-dir", str(cache), features=VNNI).stdout
    assert "VNNI/ARM" in _row(listing, "tiny8") and "not here" not in listing


@pytest.mark.parametrize("cli", CLIS)
def test_remove_warns_once_and_strict_refuses(cli: str, tmp_path: Path) -> None:
    _variant(tmp_path / "cache", "tiny8", CLAIM_8BIT)
    args = ["remove", str(CALIBRATION / "chelsea.png"), "-o", str(tmp_path / "out.png"), "--model", "tiny8",
            "--cache-dir", str(tmp_path / "cache")]
    proc = _run(cli, *args, features=NO_VNNI)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("warning:") == 1 and "no AVX-512 VNNI or AVX-VNNI" in proc.stderr
    proc = _run(cli, *args, "--strict-cpu", features=NO_VNNI)
    assert proc.returncode == 2 and "refused" in proc.stderr and "warning:" not in proc.stderr
