"""What the CPU offers, read from ``/proc/cpuinfo`` without importing torch.

``app.config`` checks ``CHAT_KERNELS=bf16`` against it at start: oneDNN runs bf16
matmuls on any AVX-512 CPU, but without the AVX512_BF16 (or AMX) instructions it
emulates them and is slower than fp32, so the lossy setting would lose on both counts.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

# CHAT_KERNELS: the packed linears' arithmetic, fp32 (exact, the default) or bf16 (opt-in, lossy)
KERNELS = ("fp32", "bf16")
CPUINFO = Path("/proc/cpuinfo")
# either instruction set gives oneDNN native bf16 dot products
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@cache
def cpu_flags() -> frozenset[str]:
    """The first processor's feature flags (empty where /proc/cpuinfo is missing, e.g. macOS)."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def has_native_bf16() -> bool:
    """True when the CPU computes bf16 dot products in hardware (AVX512_BF16 or AMX-BF16)."""
    return bool(cpu_flags() & NATIVE_BF16_FLAGS)
