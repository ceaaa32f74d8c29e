"""What machine a measurement ran on: the CPU model and the instruction-set extensions that decide
CPU inference speed and OpenVINO's default precision (bf16 where the CPU has bf16/AMX units, else
f32). Every speed figure is recorded beside them (result files of ``ditta eval`` and ``bench/``)."""

from __future__ import annotations

import os
import platform
from typing import Dict, List, Mapping, Optional

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


#: environment variables that cap the instruction set of the kernels, so that a newer CPU runs what an older one
#: would (an AVX2-only CPU emulated on an AVX-512 one): oneDNN's (OpenVINO's CPU plugin and torch's mkldnn),
#: torch's ATen dispatch, and OpenCV's dispatch (upstream behaviour of each library; nothing here reads them
#: but :func:`isa_limits` and :func:`ditta_ros.runtime.openvino.bf16_capped`)
ISA_LIMIT_VARS = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "OPENCV_CPU_DISABLE")

def isa_limits(environ: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The set variables of :data:`ISA_LIMIT_VARS` (``environ``: ``os.environ`` by default) as
    ``{name: value}``; ``{}`` where none is set. Recorded beside speed figures: with a cap, the figures
    are those of the capped kernels on this CPU (an emulation, not the older CPU itself: clock, caches
    and memory stay this machine's)."""
    env = os.environ if environ is None else environ
    return {k: env[k] for k in ISA_LIMIT_VARS if env.get(k)}


def record() -> Dict[str, object]:
    """This machine as recorded beside speed figures: ``cpu`` (model name), ``cpu_flags`` (:func:`cpu_flags`),
    ``isa_limits`` (:func:`isa_limits`) and ``cores`` (logical CPUs, :func:`os.cpu_count`)."""
    return {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "isa_limits": isa_limits(), "cores": os.cpu_count()}


def describe(m: Mapping[str, object]) -> str:
    """``"<cpu>, <n> cores, flags <ISA flags>[; kernels capped by VAR=value ...]"`` from a :func:`record`
    (or a results file's machine dict holding at least ``cpu`` and ``cores``; older files without
    ``cpu_flags`` read "ISA flags not recorded")."""
    flags = m.get("cpu_flags")
    if flags is None:  # a results file from before the flags were recorded
        return f"{m['cpu']}, {m['cores']} cores, ISA flags not recorded"
    text = f"{m['cpu']}, {m['cores']} cores, " + ("flags " + " ".join(flags) if flags else "no AVX2/AVX-512 flags seen")
    limits = m.get("isa_limits")
    if limits:
        text += "; kernels capped by " + " ".join(f"{k}={v}" for k, v in sorted(limits.items()))
    return text
