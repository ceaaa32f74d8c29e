"""What machine a measurement ran on: the CPU model and the instruction-set extensions that decide
CPU inference speed and OpenVINO's default precision (bf16 where the CPU has bf16/AMX units, else
f32). Every speed figure is recorded beside them (result files of ``ditta eval`` and ``bench/``)."""

from __future__ import annotations

import platform
from typing import List

#: the extensions that matter for CNN inference on x86 (vector width, dot products, bf16/int8 units)
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


CPUINFO = "/proc/cpuinfo"


def _cpuinfo_field(name: str, path: str = CPUINFO) -> str:
    """The first ``name : value`` of ``path`` ("" where there is none, e.g. not Linux)."""
    try:
        with open(path) as f:
            for line in f:
                if line.split(":", 1)[0].strip() == name:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_model(path: str = CPUINFO) -> str:
    """The CPU's model name (``path``, ``/proc/cpuinfo``; else :func:`platform.processor` or the machine type)."""
    return _cpuinfo_field("model name", path) or platform.processor() or platform.machine()


def cpu_flags(path: str = CPUINFO) -> List[str]:
    """Which of :data:`ISA_FLAGS` this CPU has, in that order (``[]`` where ``path``, ``/proc/cpuinfo``,
    has no ``flags`` line: not Linux, or not x86)."""
    have = set(_cpuinfo_field("flags", path).split())
    return [f for f in ISA_FLAGS if f in have]
