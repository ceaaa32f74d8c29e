"""Helpers shared by the benchmark scripts: timing statistics, machine description,
peak-memory measurement in a fresh subprocess, and results files."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def time_fn(fn: Callable[[], object], warmup: int = 2, iters: int = 10) -> Dict[str, float]:
    """Wall time of ``fn()`` in milliseconds: median, p95, mean over ``iters`` runs after ``warmup``."""
    for _ in range(warmup):
        fn()
    ts: List[float] = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        ts.append(1000 * (time.perf_counter() - t))
    ts.sort()
    p95 = ts[min(len(ts) - 1, int(round(0.95 * (len(ts) - 1))))]
    return {"median_ms": statistics.median(ts), "p95_ms": p95, "mean_ms": statistics.fmean(ts), "iters": iters}


def rss_mb(pid="self") -> float:
    """Current resident set size (MiB) of this process or of process ``pid``, from /proc (Linux)."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(script: str, args: List[str]) -> Dict[str, object]:
    """Run ``script --case-json args...`` in a fresh interpreter (clean peak-memory
    accounting) and return the JSON it prints last."""
    out = subprocess.run([sys.executable, script, "--case", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> Dict[str, object]:
    import torch

    from ditta_ros.tools import machine as this

    return {"host": platform.node(), **this.record(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def describe_machine(m: Dict[str, object]) -> str:
    """``"<cpu>, <n> cores, <ISA flags>"`` for a results file's heading (:func:`machine`'s dict;
    :func:`ditta_ros.tools.machine.describe`)."""
    from ditta_ros.tools.machine import describe

    return describe(m)


def isa_cap_suffix() -> str:
    """``"_onednn-<isa>"`` (lower case) where ``ONEDNN_MAX_CPU_ISA`` caps the kernels (an older CPU emulated on
    this one: :func:`ditta_ros.tools.machine.isa_limits`), else ``""``: keeps such runs' results files apart."""
    from ditta_ros.tools.machine import isa_limits

    cap = isa_limits().get("ONEDNN_MAX_CPU_ISA")
    return f"_onednn-{cap.strip().lower()}" if cap else ""


@contextlib.contextmanager
def one_core_busy(busy: bool = True):
    """Another process spinning on one core while the block runs (a Python busy loop: the camera driver,
    recorder or other nodes a robot's cores also serve); nothing where ``busy`` is False."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        yield
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()


def first_frames(path: str, n: int):
    """``(clip, frames, fps)``: the clip at ``path`` (:func:`ditta_ros.data.open_clip`), its first ``n`` frames
    as contiguous uint8 RGB arrays, and its frame rate (15 where it has none)."""
    import numpy as np

    from ditta_ros.data import open_clip

    clip = open_clip(path)
    frames = [np.ascontiguousarray(clip.frame(i)) for i in range(min(len(clip), n))]
    return clip, frames, float(getattr(clip, "fps", None) or 15.0)


def served_exports(model_name: str, hw, folder: str, plain_logits: bool = False):
    """``(plain, select)``: ONNX paths of ``model_name`` exported at ``hw`` into ``folder``: its plain ISS graph
    (``tau = 0``) and the graph the ``select`` preset serves (its ``tau`` and fusion; with the ``plain_logits``
    output when asked, for :func:`ditta_ros.runtime.openvino.split_graph`)."""
    import os

    from ditta_ros.adapt import DiTTANet
    from ditta_ros.export import export_onnx
    from ditta_ros.iss import load_model
    from ditta_ros.presets import DittaConfig

    model, info = load_model(model_name)
    cfg = DittaConfig.from_preset("select")
    plain = export_onnx(DiTTANet(model), hw, os.path.join(folder, "plain"), info.name, tau=0.0)[0]
    select = export_onnx(DiTTANet(model), hw, os.path.join(folder, "flow"), info.name, tau=cfg.tau, fusion=cfg.fusion,
                         plain_logits=plain_logits, flow_grid=cfg.flow_grid)[0]
    return plain, select


def iss_flow_live(model_name: str, hw, fps: float, folder: str, **config):
    """``(model, ckpt, make)``: the ISS network of ``model_name``; the pre-trained network with the flow branch saved
    as an adaptation in ``folder`` (what ``select`` serves when no decoder candidate wins, so no adaptation runs);
    and ``make(**more)``, a :class:`~ditta_ros.live.LivePipeline` on OpenVINO that streams it from the first frame
    (exports and engines in ``folder``; ``config`` and ``more``: further :class:`~ditta_ros.live.LiveConfig` fields)."""
    import os

    from ditta_ros.adapt import DiTTANet
    from ditta_ros.checkpoint import save_adapted
    from ditta_ros.inference import ISSRunner
    from ditta_ros.iss import load_model
    from ditta_ros.live import LiveConfig, LivePipeline

    model, _ = load_model(model_name)
    ckpt = os.path.join(folder, "iss_flow.pt")
    save_adapted(DiTTANet(model), ckpt, {"model": model_name, "frame_hw": list(hw), "fusion": "flow",
                                         "trained_gap": 1.0 / fps})

    def make(**more):
        cfg = LiveConfig(model=model_name, backend="openvino", adapted_checkpoint=ckpt,
                         export_dir=os.path.join(folder, "export"), engine_cache=os.path.join(folder, "engines"),
                         **{**config, **more})
        return LivePipeline(cfg, ISSRunner(model, "cpu"))

    return model, ckpt, make


def cap_prefix() -> str:
    """The ISA caps of this run as a shell prefix (``"ONEDNN_MAX_CPU_ISA=AVX2 ... "``; ``""`` without any), so
    that a results file's command reruns as it ran."""
    from ditta_ros.tools.machine import isa_limits

    return "".join(f"{k}={v} " for k, v in sorted(isa_limits().items()))


def write_results(name: str, payload: Dict[str, object]) -> str:
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, name + ".json")
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
    return path


def write_markdown(name: str, lines: List[str]) -> str:
    """Write ``lines`` as ``RESULTS/<name>.md``, print them, and return the path."""
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, name + ".md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return path


HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(HERE, "..", "..", "shared")
DEFAULT_CLIP = os.path.join(SHARED, "data", "camvid_0016E5_15hz")


def clip_parser(doc: str):
    """An argument parser with the optional CLIP argument (default: the CamVid clip in
    ../shared); also points ``$DITTA_MODEL_MIRROR`` at ../shared/models unless set."""
    import argparse

    os.environ.setdefault("DITTA_MODEL_MIRROR", os.path.join(SHARED, "models"))
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("clip", nargs="?", default=DEFAULT_CLIP, help="clip folder (default: the CamVid clip)")
    return p


def speed_parser(doc: str, frames: int, rounds: int, model: str = "espnetv2-s2.0-cityscapes-1024x512"):
    """:func:`clip_parser` with what the interleaved speed benchmarks share: ``--model`` (registry name),
    ``--frames`` (the clip's first N, default ``frames``) and ``--rounds`` (interleaved rounds, default ``rounds``)."""
    p = clip_parser(doc)
    p.add_argument("--model", default=model)
    p.add_argument("--frames", type=int, default=frames)
    p.add_argument("--rounds", type=int, default=rounds)
    return p
