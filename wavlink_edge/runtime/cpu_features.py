"""Which integer dot-product instructions this CPU has, from /proc/cpuinfo (torch-free, no ORT call).

Why the runtime asks: a u8 x s8 int8 GEMM on an x86 CPU *without* VNNI runs through `vpmaddubsw`,
which adds two u8 x s8 products into a saturating int16. With 8-bit weights and activations spanning the
whole u8 range such a pair can exceed 32767 and the result is silently wrong (measured: cosine 0.64
on an AVX2-only CPU for an artifact gated at 0.996 on a VNNI one). CPUs with VNNI (AVX512-VNNI,
AVX-VNNI), AMX-INT8 or ARM's dot-product instructions accumulate in int32 and never saturate. An
artifact whose integer products cannot overflow int16 (weights kept within 7 bits) is safe everywhere.

`int8_kind()` names the class of this CPU: "vnni" (x86 with avx512_vnni, avx_vnni or amx_int8),
"arm_dotprod" (asimddp), "avx2" (x86 without those), or "unknown" (no /proc/cpuinfo, another OS, or
flags we do not recognise). Anything but "vnni" / "arm_dotprod" gets the saturation-safe artifact.
"""
from __future__ import annotations

from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
ARM_DOTPROD_FLAGS = frozenset({"asimddp"})
# The CPU kinds whose int8 dot products accumulate in int32 (no int16 saturation).
NO_SATURATION_KINDS = frozenset({"vnni", "arm_dotprod"})


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The feature flags of the first processor listed ("flags" on x86, "Features" on ARM); empty if unknown."""
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text(errors="replace")
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


def int8_kind(flags: frozenset[str] | None = None) -> str:
    """"vnni", "arm_dotprod", "avx2" or "unknown" (see the module docstring)."""
    flags = cpu_flags() if flags is None else frozenset(flags)
    if flags & VNNI_FLAGS:
        return "vnni"
    if flags & ARM_DOTPROD_FLAGS:
        return "arm_dotprod"
    if "avx2" in flags:
        return "avx2"
    return "unknown"


def int8_saturation_free(flags: frozenset[str] | None = None) -> bool:
    """True where a full 8-bit u8 x s8 GEMM cannot saturate (VNNI / AMX / ARM dot product)."""
    return int8_kind(flags) in NO_SATURATION_KINDS
