"""Benchmark: the ROS route against offline ``ditta eval`` on the same labelled clip.

    ditta bag make CLIP -> ditta_node (subprocess, real DDS) -> ditta bag record -> ditta bag eval

The processes are run by :func:`ditta_ros.tools.route.run_route` (the same as ``ditta demo``
and ``ditta compare``): the player sends the warm-up frames, pauses until the node
streams, then sends the rest in lockstep (an unhurried replay, the node drops
nothing; otherwise ``--rate`` x the clip's rate); the recording is scored by
header stamp without the warm-up frames, as ``ditta eval`` does under W2F.
Writes ``bench/results/bag_route_<clip>.{json,md}`` with both metric rows, the
node's adaptation time, its per-frame latency (output minus input receive time
on the recorder's clock) and its frame counters.

    python bench/bag_route.py [CLIP] [--offline bench/results/compare_camvid/ditta/result.json] [--rate 0.1]
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    from common import RESULTS, clip_parser, machine, write_results
    from ditta_ros.protocol import DEFAULT_WARMUP_RATIO

    p = clip_parser(__doc__)
    p.add_argument("--model", default="espnetv2-s2.0-cityscapes-1024x512")
    p.add_argument("--label-map", default="cityscapes19_to_camvid11")
    p.add_argument("--warmup-ratio", type=int, default=DEFAULT_WARMUP_RATIO)
    p.add_argument("--rate", type=float, default=1.0, help="playback speed factor (lockstep slows it further)")
    p.add_argument("--offline", default=os.path.join(RESULTS, "compare_camvid", "ditta", "result.json"))
    p.add_argument("--name", default=None)
    args = p.parse_args()

    from ditta_ros.tools.compare import route_eval
    from ditta_ros.data import open_clip

    clip = open_clip(args.clip)
    name = args.name or f"bag_route_{clip.name}"
    with tempfile.TemporaryDirectory() as tmp:
        row = route_eval(args.clip, os.path.join(tmp, "route"), args.model, args.label_map, args.warmup_ratio,
                         rate=args.rate)
        shutil.copy(os.path.join(tmp, "route", "node.log"), os.path.join(RESULTS, f"{name}.node.log"))
    res, last, n_warm, sent, wall = row, row["node"], row["warmup_frames"], row["published"], row["wall_seconds"]
    offline = json.load(open(args.offline)) if os.path.isfile(args.offline) else {}
    keys = ("mIoU", "wIoU", "mVC8", "mVC16")
    payload = {
        "clip": clip.name, "model": args.model, "warmup_frames": n_warm, "published": sent, "rate": args.rate,
        "bag_route": {k: res[k] for k in keys}, "offline": {k: offline.get(k) for k in keys},
        "abs_diff": {k: abs(res[k] - offline[k]) for k in keys if k in offline},
        "matched_frames": res["frames"], "missing_frames": res["missing_frames"],
        "node_latency_ms": res.get("latency_ms") or None, "node_status": last, "wall_seconds": wall,
        "offline_result": os.path.relpath(args.offline, ROOT), "machine": machine(),
        "command": "python bench/bag_route.py " + " ".join(sys.argv[1:]),
    }
    write_results(name, payload)
    lat = payload["node_latency_ms"] or {}
    lines = [f"# ROS route vs offline `ditta eval` ({clip.name}, {args.model})", "",
             f"`{payload['command']}`", "",
             "| route | mIoU | wIoU | mVC8 | mVC16 |", "|---|---|---|---|---|",
             "| bag -> ditta_node -> record -> bag eval | " + " | ".join(f"{res[k]:.1f}" for k in keys) + " |",
             "| offline ditta eval | " + " | ".join(f"{offline[k]:.1f}" if k in offline else "-" for k in keys) + " |",
             "", f"Matched {res['frames']} evaluation frames ({res['missing_frames']} missing); node "
             f"latency median {lat.get('median', float('nan')):.0f} ms, p95 {lat.get('p95', float('nan')):.0f} ms; "
             f"adaptation {last.get('last_adaptation', {}).get('adapt_seconds')} s; "
             f"frames in/out/dropped/bad {last.get('frames_in')}/{last.get('frames_out')}/{last.get('dropped')}/"
             f"{last.get('bad')}; backend {last.get('last_adaptation', {}).get('backend')}."]
    with open(os.path.join(RESULTS, name + ".md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
