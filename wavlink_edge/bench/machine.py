"""What the benchmark ran on: CPU model, cores, ISA flags, frequency, theoretical peak, GPU, library versions.

Peak FLOP/s is computed, not measured: usable cores x clock x FLOPs per cycle per core for the widest
SIMD FMA the CPU reports, assuming two FMA ports (true for server Xeons and Zen; one-port parts reach
half). INT8 peak assumes VNNI dot-product instructions where the flags say so (4x the fp32 rate),
otherwise 2x via pmaddubsw. AMX tiles are reported but left out of the peak: the backends here do not
use them for these graphs, and a peak nobody can reach would make every fraction meaningless.
"""
from __future__ import annotations

import os
import platform
import re
import subprocess
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "neon", "asimd")
LIBRARIES = ("numpy", "onnxruntime", "onnxruntime-gpu", "torch", "ctranslate2", "transformers",
             "sentence-transformers", "tokenizers", "onnx", "wavlink-edge")
FMA_PORTS = 2


def usable_cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS / Windows
        return list(range(os.cpu_count() or 1))


def _cpuinfo() -> dict:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    fields = {}
    for line in text.splitlines():
        if ":" in line:
            key, value = (s.strip() for s in line.split(":", 1))
            fields.setdefault(key, value)
    return fields


def cpu_frequency_ghz(info: dict) -> tuple[float, str]:
    """Best available clock and where it came from (max boost from sysfs beats the nominal MHz)."""
    max_freq = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    if max_freq.exists():
        return int(max_freq.read_text()) / 1e6, "sysfs cpuinfo_max_freq"
    match = re.search(r"@\s*([\d.]+)\s*GHz", info.get("model name", ""))
    if match:
        return float(match.group(1)), "model name"
    if "cpu MHz" in info:
        # Under a hypervisor this is the nominal TSC clock; turbo may run higher.
        return float(info["cpu MHz"]) / 1000, "/proc/cpuinfo cpu MHz (nominal)"
    return 0.0, "unknown"


def flops_per_cycle(flags: set[str]) -> dict:
    """Per-core FLOPs (fp32) and int8 ops per cycle for the ISA, with the reasoning as text."""
    if "avx512f" in flags:
        lanes, isa = 16, "AVX-512"
    elif "avx2" in flags and "fma" in flags:
        lanes, isa = 8, "AVX2+FMA"
    elif "asimd" in flags or "neon" in flags:
        lanes, isa = 4, "NEON"
    else:
        lanes, isa = 4, "SSE (no FMA: mul+add)"
    fp32 = lanes * 2 * FMA_PORTS  # an FMA is 2 FLOPs per lane
    vnni = "avx512_vnni" in flags if lanes == 16 else "avx_vnni" in flags
    int8 = fp32 * (4 if vnni else 2)
    return {"isa": isa, "fp32_lanes": lanes, "fma_ports_assumed": FMA_PORTS, "fp32_flops_per_cycle": fp32,
            "int8_ops_per_cycle": int8, "int8_path": "VNNI dot product (4x fp32)" if vnni else "pmaddubsw (2x fp32)"}


def peak(cores: int, ghz: float, per_cycle: dict) -> dict:
    fp32 = cores * ghz * per_cycle["fp32_flops_per_cycle"]
    return {"fp32_gflops": round(fp32, 1), "int8_gops": round(cores * ghz * per_cycle["int8_ops_per_cycle"], 1),
            "formula": f"{cores} cores x {ghz:.2f} GHz x {per_cycle['fp32_flops_per_cycle']} FLOP/cycle "
                       f"({per_cycle['isa']}, {per_cycle['fma_ports_assumed']} FMA ports assumed); "
                       f"int8: x{per_cycle['int8_ops_per_cycle'] // per_cycle['fp32_flops_per_cycle']} "
                       f"({per_cycle['int8_path']}); AMX not counted"}


def gpus() -> list[dict]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return []
    rows = [line.split(", ") for line in out.stdout.strip().splitlines() if line.strip()]
    return [{"name": r[0], "memory": r[1], "driver": r[2]} for r in rows if len(r) == 3]


def library_versions() -> dict:
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


@lru_cache(maxsize=1)
def describe(threads: int | None = None) -> dict:
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    cores = usable_cores()
    n = threads or len(cores)
    ghz, source = cpu_frequency_ghz(info)
    per_cycle = flops_per_cycle(flags)
    ort_providers = []
    try:
        import onnxruntime as ort

        ort_providers = ort.get_available_providers()
    except ImportError:
        pass
    return {
        "cpu_model": info.get("model name") or platform.processor() or platform.machine(),
        "arch": platform.machine(), "usable_cores": len(cores), "os_cpu_count": os.cpu_count(),
        "threads_used": n, "hypervisor": "hypervisor" in flags,
        "isa": {f: f in flags for f in ISA_FLAGS},
        "frequency_ghz": round(ghz, 3), "frequency_source": source,
        "flops_per_cycle": per_cycle, "peak": peak(n, ghz, per_cycle),
        "gpus": gpus(), "onnxruntime_providers": ort_providers,
        "python": platform.python_version(), "platform": platform.platform(), "libraries": library_versions(),
    }
