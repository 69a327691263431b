"""What this machine is, for records of where a number was measured and for what its CPU can do.

TensorFlow's last digits and its speed depend on the CPU: oneDNN picks kernels by the vector
extensions it finds (AVX2, AVX-512, AMX), and ``train.precision: bfloat16`` is rewritten to
bfloat16 only where the CPU computes it natively and oneDNN is on. Linux's /proc/cpuinfo says
which; elsewhere the lookups fall back to what the platform module knows.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")  # Linux only; elsewhere the lookups below fall back

# AMD's families by microarchitecture: its virtual CPUs often say only "AMD EPYC".
_AMD_FAMILIES = {"23": "Zen/Zen 2", "25": "Zen 3/Zen 4", "26": "Zen 5"}


def _cpuinfo(key: str) -> str | None:
    """The first value of ``key`` in CPUINFO, or None."""
    try:
        for line in CPUINFO.read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == key:
                return value.strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name, for records of where a number was measured."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    return set((_cpuinfo("flags") or "").split())


def cpu_has_bfloat16() -> bool:
    """Whether the CPU computes bfloat16 natively (AVX512_BF16 or AMX); Linux only."""
    flags = cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def onednn_enabled() -> bool:
    """Whether TensorFlow uses its oneDNN kernels (on by default on x86 Linux; the environment
    variable TF_ENABLE_ONEDNN_OPTS=0 turns them off, and with them the bfloat16 rewrite)."""
    value = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1").strip().lower()
    return value not in ("0", "false")


def bfloat16_takes_effect() -> bool:
    """Whether ``train.precision: bfloat16`` changes anything here: TensorFlow's rewrite to
    bfloat16 is a oneDNN pass that runs only on CPUs with native bfloat16. Elsewhere the graph
    stays float32: the same results, in the same time (measured on an AMD EPYC with AVX2 only)."""
    return cpu_has_bfloat16() and onednn_enabled()


def vector_extensions() -> list[str]:
    """The extensions that decide TensorFlow's kernels, widest first: AMX, AVX512_BF16,
    AVX-512, AVX2 (those the CPU has)."""
    flags = cpu_flags()
    known = [("amx_bf16", "AMX"), ("avx512_bf16", "AVX512_BF16"), ("avx512f", "AVX-512"), ("avx2", "AVX2")]
    return [label for flag, label in known if flag in flags]


def describe() -> dict[str, object]:
    """The machine as a run records it: ``{"processor": "AMD EPYC", "family": "Zen 5", ...}``."""
    vendor = _cpuinfo("vendor_id") or ""
    family = _AMD_FAMILIES.get(_cpuinfo("cpu family") or "") if vendor == "AuthenticAMD" else None
    if family == "Zen 3/Zen 4":  # one family number; Zen 4 brought AVX-512, Zen 3 has none
        family = "Zen 4" if "avx512f" in cpu_flags() else "Zen 3"
    return {
        "platform": platform.platform(),
        "processor": cpu_model(),
        **({"family": family} if family else {}),
        "cores": os.cpu_count(),
        "vector": vector_extensions(),
        "bfloat16": cpu_has_bfloat16(),
        "onednn": onednn_enabled(),
    }


def summary(machine: dict | None = None) -> str:
    """One line: ``AMD EPYC (Zen 5), 2 cores, AVX512_BF16 + AVX-512 + AVX2, no AMX``."""
    m = machine if machine is not None else describe()
    name = m.get("processor") or "unknown CPU"
    if m.get("family"):
        name += f" ({m['family']})"
    vector = list(m.get("vector") or [])
    parts = [name, f"{m.get('cores', '?')} cores"]
    if vector:
        parts.append(" + ".join(vector) + ("" if "AMX" in vector else ", no AMX"))
    if m.get("onednn") is False:
        parts.append("oneDNN off")
    return ", ".join(parts)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
