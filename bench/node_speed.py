"""Benchmark: the node's own speed on a real clip, per model and runtime backend.

For each model and backend the demo route runs (:func:`ditta_ros.tools.demo.run_demo`, the
same as ``ditta demo``): the labelled CamVid clip as a jpeg bag -> ``ditta_node``
(real DDS, default parameters of ``config/ditta.yaml`` but the model and backend) ->
recorder. The replay is lockstep (each frame waits for its label image), so the
streaming rate is what the node sustains, not what the bag offers. Reported:

* ``stream fps``: label images per second over the streamed frames (recorder clock; in
  lockstep it includes the player's and recorder's turn for every frame);
* ``node fps``: 1000 / the node's own processing time per frame (receive to publish:
  decoding, inference, publishing; its smoothed ``processing_ms``), what it sustains
  when a camera keeps frames waiting;
* ``warm-up to streaming``: seconds from the end of the warm-up window to the first
  adapted label image (the node's ``last_adaptation.total_seconds``: teacher,
  adaptation, guard, export and backend preparation, all while the ISS serves);
* the adaptation's parts and the node's latency (median, p95).

    python bench/node_speed.py [--clip CLIP] [--models M ...] [--backends torch openvino]
    # writes bench/results/node_speed.{json,md}
    python bench/node_speed.py --suggest [--camera-hz 30] [--results bench/results/node_speed.json]
    # which model and backend keep a camera's processed frames within max_gap, from those numbers

The suggestion takes the processed-frame gap a live camera would see as the longer of the camera's
frame interval and the node's processing time per frame (a node drops what arrives while it is busy),
and compares it with the default preset's ``max_gap``: within it, the temporal branch is fused.
Measure on the robot's own machine first: the numbers depend on its CPU (flags in the results file).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

MODELS = ["espnetv2-s2.0-cityscapes-1024x512", "espnetv2-s2.0-cityscapes-512x256"]


def main() -> None:
    from common import DEFAULT_CLIP, RESULTS, SHARED, describe_machine, machine, write_results

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", default=DEFAULT_CLIP)
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--backends", nargs="+", default=["torch", "openvino"])
    p.add_argument("--name", default="node_speed")
    p.add_argument("--suggest", action="store_true", help="only read the results file and suggest a model")
    p.add_argument("--camera-hz", type=float, default=30.0)
    p.add_argument("--results", default=None, help="results file for --suggest (default: RESULTS/<name>.json)")
    args = p.parse_args()
    if args.suggest:
        import json

        with open(args.results or os.path.join(RESULTS, args.name + ".json")) as f:
            print("\n".join(suggest(json.load(f), args.camera_hz)))
        return
    os.environ.setdefault("DITTA_MODEL_MIRROR", os.path.join(SHARED, "models"))

    from ditta_ros.tools.demo import DemoConfig, run_demo

    rows = []
    for model in args.models:
        for backend in args.backends:
            with tempfile.TemporaryDirectory() as tmp:
                s = run_demo(DemoConfig(input=args.clip, out=tmp, model=model, backend=backend, progress=False))
            a, st, n = s["adaptation"], s["streaming"], s["node"]
            row = {"model": model, "backend": backend, "backend_used": s["backend"], "frames": s["input"]["frames"],
                   "frame": f"{s['input']['width']}x{s['input']['height']}", "stream_fps": st["fps"],
                   "streamed_frames": st["frames"], "latency_ms_median": st["latency_ms_median"],
                   "latency_ms_p95": st["latency_ms_p95"], "warmup_to_streaming_s": a["total_seconds"],
                   "adapt_seconds": a["adapt_seconds"], "teacher_seconds": a["teacher_seconds"],
                   "tta_seconds": a["tta_seconds"], "node": n}
            rows.append(row)
            print(f"{model} {backend}: {row['stream_fps']} fps, warm-up to streaming {row['warmup_to_streaming_s']} s",
                  flush=True)
    payload = {"clip": os.path.basename(os.path.abspath(args.clip)), "machine": machine(), "rows": rows,
               "command": "python bench/node_speed.py " + " ".join(sys.argv[1:])}
    write_results(args.name, payload)
    m = payload["machine"]
    lines = [f"# Node speed on {payload['clip']} ({describe_machine(m)})", "", f"`{payload['command']}`", "",
             "Lockstep replay over real DDS (each frame waits for its label image); warm-up 10 frames, default "
             "parameters otherwise.", "",
             "| model | backend | frame | stream fps | node fps | latency median / p95 ms | warm-up to streaming s | "
             "teacher s | adaptation s | frames in/out/dropped/bad |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        n = r["node"]
        node_fps = 1000.0 / n["processing_ms"] if n.get("processing_ms") else float("nan")
        lines.append(f"| {r['model']} | {r['backend_used']} | {r['frame']} | {r['stream_fps']:.2f} | {node_fps:.2f} | "
                     f"{r['latency_ms_median']:.0f} / {r['latency_ms_p95']:.0f} | {r['warmup_to_streaming_s']} | "
                     f"{r['teacher_seconds']} | {r['tta_seconds']} | {n.get('frames_in')}/{n.get('frames_out')}/"
                     f"{n.get('dropped')}/{n.get('bad')} |")
    with open(os.path.join(RESULTS, args.name + ".md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def suggest(payload, camera_hz: float):
    """Lines telling which measured model/backend keeps the processed-frame gap of a ``camera_hz``
    camera within the default preset's ``max_gap`` (module docstring); ``payload``: a results file of
    this benchmark."""
    from common import describe_machine
    from ditta_ros.presets import DEFAULT_PRESET, DittaConfig

    limit = DittaConfig.from_preset(DEFAULT_PRESET).max_gap
    m = payload["machine"]
    lines = [f"measured on {describe_machine(m)} ({m.get('date')}); camera {camera_hz:g} Hz, "
             f"max_gap {limit:g} s (preset {DEFAULT_PRESET})"]
    fits = []
    for r in payload["rows"]:
        ms = (r.get("node") or {}).get("processing_ms")
        if not ms:
            continue
        gap = max(1.0 / camera_hz, ms / 1000.0)
        ok = limit <= 0 or gap <= limit
        fits += [r] if ok else []
        lines.append(f"  {r['model']} on {r['backend_used'].split(',')[0]}: {ms:.0f} ms per frame -> processed frames "
                     f"{gap:.3f} s apart: {'fused' if ok else 'beyond max_gap, not fused'}")
    best = min(fits, key=lambda r: r["node"]["processing_ms"], default=None)
    lines.append(f"suggested: model {best['model']} with backend {best['backend']}" if best is not None else
                 "suggested: none keeps up; use a smaller model, a GPU, or accept the ISS between fused frames")
    return lines


if __name__ == "__main__":
    main()
