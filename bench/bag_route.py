"""Benchmark: the ROS route against offline ``ditta eval`` on the same labelled clip.

    ditta bag make CLIP -> ditta_node (subprocess, real DDS) -> ditta bag record -> ditta bag eval

The player sends the warm-up frames, pauses until ``/ditta/status`` reports
STREAMING (the node adapts meanwhile), then sends the rest; every frame waits for
its label image (``--lockstep``: an unhurried replay, the node drops nothing) and
otherwise follows ``--rate`` x the clip's rate; the recording is scored by
header stamp without the warm-up frames, as ``ditta eval`` does under W2F.
Writes ``bench/results/bag_route_<clip>.{json,md}`` with both metric rows, the
node's adaptation time, its per-frame latency (output minus input receive time
on the recorder's clock) and its frame counters.

    python bench/bag_route.py [CLIP] [--offline bench/results/compare_camvid/ditta/result.json] [--rate 0.1]
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    from common import RESULTS, clip_parser, machine, write_results

    p = clip_parser(__doc__)
    p.add_argument("--model", default="espnetv2-s2.0-cityscapes-1024x512")
    p.add_argument("--label-map", default="cityscapes19_to_camvid11")
    p.add_argument("--warmup-ratio", type=int, default=10)
    p.add_argument("--rate", type=float, default=1.0, help="playback speed factor (lockstep slows it further)")
    p.add_argument("--offline", default=os.path.join(RESULTS, "compare_camvid", "ditta", "result.json"))
    p.add_argument("--name", default=None)
    args = p.parse_args()

    from ditta_ros import bag
    from ditta_ros.data import open_clip
    from ditta_ros.protocol import warmup_length
    from ditta_ros.resources import local_ros_env

    clip = open_clip(args.clip)
    n_warm = warmup_length(len(clip), args.warmup_ratio)
    with tempfile.TemporaryDirectory() as tmp:
        env = local_ros_env(os.path.join(tmp, "log"), pythonpath=ROOT)
        src, rec = os.path.join(tmp, "clip_bag"), os.path.join(tmp, "rec")
        made = bag.make_bag(args.clip, src, progress=False)
        print(f"bag: {made['frames']} frames at {made['fps']} Hz, warm-up {n_warm}", flush=True)
        node_log_path = os.path.join(RESULTS, f"bag_route_{clip.name}.node.log")
        node_log = open(node_log_path, "w")  # kept: the node's own account of the run
        node = subprocess.Popen([sys.executable, "-m", "ditta_ros.node", "--ros-args",
                                 "-p", f"model:={args.model}", "-p", f"warmup_frames:={n_warm}",
                                 "-p", "input_topic:=/camera/image_raw", "-p", "publish_color:=false",
                                 "-p", f"export_dir:={tmp}/export"], env=env, stdout=node_log,
                                stderr=subprocess.STDOUT)
        recorder = subprocess.Popen([sys.executable, "-m", "ditta_ros.cli", "bag", "record", bag.IMAGE_TOPIC,
                                     bag.SEMANTIC_TOPIC, "--out", rec, "--count", str(2 * len(clip)),
                                     "--idle-timeout", "900"], env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
        t0 = time.monotonic()
        try:
            player = subprocess.run([sys.executable, "-m", "ditta_ros.cli", "bag", "play", src, "--rate", str(args.rate),
                                     "--topics", bag.IMAGE_TOPIC, "--wait", "120", "--pause-after", str(n_warm),
                                     "--lockstep", "--min-subscribers", "2"],
                                    env=env, capture_output=True, text=True, timeout=3600)
            if player.returncode:
                raise RuntimeError("bag play failed:\n" + player.stdout + player.stderr)
            sent = int(player.stdout.split("published ")[1].split()[0])
            out, _ = recorder.communicate(timeout=600)
        finally:
            node.send_signal(signal.SIGINT)  # the node logs its final status on shutdown
            try:
                node.wait(30)
            except subprocess.TimeoutExpired:
                node.kill()
            node_log.close()
        last = {}
        for line in open(node_log_path):
            if "final status: " in line:
                last = json.loads(line.split("final status: ", 1)[1])
        wall = time.monotonic() - t0
        print(out.strip().splitlines()[-1] if out.strip() else "recorder: no output", flush=True)
        res = bag.eval_bag(rec, src, os.path.join(tmp, "eval"), label_map=args.label_map, skip_first=n_warm)
    offline = json.load(open(args.offline)) if os.path.isfile(args.offline) else {}
    keys = ("mIoU", "wIoU", "mVC8", "mVC16")
    payload = {
        "clip": clip.name, "model": args.model, "warmup_frames": n_warm, "published": sent, "rate": args.rate,
        "bag_route": {k: res[k] for k in keys}, "offline": {k: offline.get(k) for k in keys},
        "abs_diff": {k: abs(res[k] - offline[k]) for k in keys if k in offline},
        "matched_frames": res["matched_frames"], "missing_frames": res["missing_frames"],
        "node_latency_ms": res.get("latency_ms"), "node_status": last, "wall_seconds": round(wall, 1),
        "offline_result": os.path.relpath(args.offline, ROOT), "machine": machine(),
        "command": "python bench/bag_route.py " + " ".join(sys.argv[1:]),
    }
    name = args.name or f"bag_route_{clip.name}"
    write_results(name, payload)
    lat = payload["node_latency_ms"] or {}
    lines = [f"# ROS route vs offline `ditta eval` ({clip.name}, {args.model})", "",
             f"`{payload['command']}`", "",
             "| route | mIoU | wIoU | mVC8 | mVC16 |", "|---|---|---|---|---|",
             "| bag -> ditta_node -> record -> bag eval | " + " | ".join(f"{res[k]:.1f}" for k in keys) + " |",
             "| offline ditta eval | " + " | ".join(f"{offline[k]:.1f}" if k in offline else "-" for k in keys) + " |",
             "", f"Matched {res['matched_frames']} evaluation frames ({res['missing_frames']} missing); node "
             f"latency median {lat.get('median', float('nan')):.0f} ms, p95 {lat.get('p95', float('nan')):.0f} ms; "
             f"adaptation {last.get('last_adaptation', {}).get('adapt_seconds')} s; "
             f"frames in/out/dropped/bad {last.get('frames_in')}/{last.get('frames_out')}/{last.get('dropped')}/"
             f"{last.get('bad')}; backend {last.get('last_adaptation', {}).get('backend')}."]
    with open(os.path.join(RESULTS, name + ".md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
