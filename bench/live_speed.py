"""Benchmark: the node's per-frame path on a CPU that other processes share, by OpenVINO thread count
(issue 20, item 1: thread counts follow the cores the node is given; node parameter ``openvino_threads``).

On a robot the node shares its cores with the camera driver, a recorder and other nodes. OpenVINO's
default (one inference thread per core) splits every layer over all cores, so one busy core stalls each
layer; one thread leaves that core alone. This measures the live pipeline's serving path without ROS
(:class:`~ditta_ros.live.serving.Serving`, the object the node calls per frame: the frozen ISS with the flow
branch that ``select`` serves when no decoder candidate wins, optical flow included), on the first frames of
a clip stamped at its own rate, for each ``openvino_threads`` value, on a quiet machine and with one core
kept busy by another process (a Python busy loop), interleaved round by round.

    python bench/live_speed.py [CLIP] [--threads 0 1] [--frames 60] [--rounds 2]
    # writes bench/results/live_speed.{json,md}
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def serve_frames(serving, frames, fps: float, start: float):
    """Per-frame milliseconds of ``serving.answer`` over ``frames`` stamped at ``fps`` from ``start`` s (the
    first 5 dropped: first-inference allocations), and the fused share."""
    import numpy as np

    stats_owner = serving.frozen
    stats = stats_owner.stats
    frames0, fused0 = stats.frames, stats.fused
    ms = []
    for i, frame in enumerate(frames):
        t0 = time.perf_counter()
        serving.answer(frame, start + i / fps)
        ms.append(1000 * (time.perf_counter() - t0))
    if serving.frozen is not stats_owner:
        raise RuntimeError("the served model changed during the run")
    return float(np.median(ms[5:])), round((stats.fused - fused0) / max(1, stats.frames - frames0), 4)


def main() -> None:
    import numpy as np

    from common import (describe_machine, first_frames, machine, one_core_busy, speed_parser, write_markdown,
                        write_results)
    from ditta_ros.adapt import DiTTANet
    from ditta_ros.inference import ISSRunner
    from ditta_ros.iss import load_model
    from ditta_ros.live.serving import Serving
    from ditta_ros.presets import DittaConfig
    from ditta_ros.runtime import RuntimeOptions

    p = speed_parser(__doc__, frames=60, rounds=2)
    p.add_argument("--threads", type=int, nargs="+", default=[0, 1])
    args = p.parse_args()

    clip, frames, fps = first_frames(args.clip, args.frames)
    model, info = load_model(args.model)
    runner = ISSRunner(model, "cpu")
    config = DittaConfig.from_preset("select")
    tmp = tempfile.mkdtemp(prefix="live_speed_")
    servings = {}
    for t in args.threads:
        runtime = RuntimeOptions(backend="openvino", openvino_threads=t, export_dir=os.path.join(tmp, "export"),
                                 engine_cache=os.path.join(tmp, "engines"))
        serving = Serving(runner, config, runtime, wait_for_backend=True)
        frozen = serving.freeze(DiTTANet(model))
        frozen.prepare(frames[0].shape[:2])  # export and compile before timing
        serving.install(frozen)
        servings[t] = serving
    precision = servings[args.threads[0]].frozen.describe()
    results = {(load, t): [] for load in ("quiet", "one core busy") for t in args.threads}
    fused = {}
    passes = 0
    for _ in range(args.rounds):
        for load in ("quiet", "one core busy"):
            with one_core_busy(load != "quiet"):
                for t in args.threads:
                    start = passes * (len(frames) / fps + 1.0)  # a new stream: 1 s after the last one
                    passes += 1
                    ms, fused[(load, t)] = serve_frames(servings[t], frames, fps, start)
                    results[(load, t)].append(ms)
    rows = [{"load": load, "openvino_threads": t, "median_ms": round(float(np.median(v)), 1),
             "fps": round(1000 / float(np.median(v)), 2), "fused_share": fused[(load, t)]}
            for (load, t), v in results.items()]
    m = machine()
    cmd = "python bench/live_speed.py " + " ".join(sys.argv[1:])
    write_results("live_speed", {"model": args.model, "clip": clip.name, "frames": len(frames), "rounds": args.rounds,
                                 "clip_fps": fps, "backend": precision, "rows": rows, "machine": m, "command": cmd})
    lines = [f"# The serving path by OpenVINO thread count: {args.model} ({describe_machine(m)})", "", f"`{cmd}`", "",
             f"{clip.name}, first {len(frames)} frames stamped at {fps:g} Hz; {precision}; `select`'s ISS with the "
             f"flow branch (optical flow included), per-frame median ms over {args.rounds} interleaved rounds; "
             "`one core busy`: another process spins on one core meanwhile.", "",
             "| load | openvino_threads | median ms | frames/s | fused share |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['load']} | {r['openvino_threads']} | {r['median_ms']:.1f} | {r['fps']:.2f} | "
                     f"{r['fused_share']:.2f} |")
    write_markdown("live_speed", lines)


if __name__ == "__main__":
    main()
