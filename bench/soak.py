"""Benchmark: a long run of the node over real DDS: memory stays flat, no frame is lost.

``ditta_node`` (a subprocess, real Fast DDS) gets ``--frames`` camera frames (the CamVid
15 Hz clip's frames, cycled, at ``--size``) from a reliable publisher in lockstep (each
frame waits for its label image, so a frame can only be lost, never dropped for being
late). The node's resident memory (``/proc/<pid>/statm``) is sampled every
``--sample-every`` frames. The rule, fixed before the first run:

* memory: growth = (median RSS over the last 10 % of the run - median RSS over frames
  10 % .. 20 %) / the latter; flat means growth < 5 % (the first 10 % is warm-up:
  allocator pools, OpenVINO's compiled model, DDS buffers);
* frames: frames sent = label images received = the node's ``frames_in`` = ``frames_out``,
  with 0 dropped and 0 bad.

``--adapt``: the node adapts on its first warm-up window and ``--readapts`` more times (``~/readapt``
called at evenly spaced frames; the adapted model serves each new warm-up and adaptation); the
adaptations that finished, the node's standing error and any traceback in its log are reported too.

    python bench/soak.py [--frames 10000] [--model espnetv2-s1.0-cityscapes-512x256] [--adapt --readapts 3]
    # writes bench/results/soak.{json,md,png}; --replot: only the .md and .png from the .json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def growth(samples, frames: int) -> dict:
    """The memory rule of the module docstring over ``[(frame, rss_mb)]``."""
    import numpy as np

    base = [r for f, r in samples if 0.1 * frames <= f < 0.2 * frames]
    last = [r for f, r in samples if f >= 0.9 * frames]
    b, e = float(np.median(base)), float(np.median(last))
    return {"baseline_mb": round(b, 1), "final_mb": round(e, 1), "growth": round((e - b) / b, 4),
            "flat": (e - b) / b < 0.05}


def main() -> None:
    from common import DEFAULT_CLIP, RESULTS, SHARED, machine, rss_mb, write_results

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", default=DEFAULT_CLIP)
    p.add_argument("--frames", type=int, default=10000)
    p.add_argument("--model", default="espnetv2-s1.0-cityscapes-512x256")
    p.add_argument("--backend", default="auto")
    p.add_argument("--size", default="480x360", help="WxH of the published frames")
    p.add_argument("--adapt", action="store_true", help="adapt on the first 10 frames (default: ISS only)")
    p.add_argument("--readapts", type=int, default=3, help="with --adapt: ~/readapt calls, evenly spaced")
    p.add_argument("--preset", default="", help="the node's preset (default: the node's own)")
    p.add_argument("--sample-every", type=int, default=100)
    p.add_argument("--name", default="soak")
    p.add_argument("--replot", action="store_true", help="rewrite the .md and .png from the .json, run nothing")
    args = p.parse_args()
    if args.replot:
        with open(os.path.join(RESULTS, args.name + ".json")) as f:
            report(json.load(f), args.name, RESULTS)
        return
    os.environ.setdefault("DITTA_MODEL_MIRROR", os.path.join(SHARED, "models"))

    import cv2
    import numpy as np
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import String
    from tqdm import tqdm

    from ditta_ros.resources import local_ros_env
    from ditta_ros.tools.route import node_command

    w, h = (int(v) for v in args.size.split("x"))
    folder = os.path.join(args.clip, "frames")
    frames = [np.ascontiguousarray(cv2.resize(cv2.imread(os.path.join(folder, n)), (w, h))[:, :, ::-1])
              for n in sorted(os.listdir(folder))]
    tmp = tempfile.mkdtemp(prefix="ditta-soak-")
    env = local_ros_env(os.path.join(tmp, "log"))
    os.environ.update(env)
    params = {"model": args.model, "backend": args.backend, "adapt": bool(args.adapt), "status_period": 1.0,
              "input_topic": "/camera/image_raw", "export_dir": os.path.join(tmp, "export"),
              "checkpoint_dir": os.path.join(tmp, "adapted"), "publish_color": False, "lazy": False}
    if args.preset:
        params["preset"] = args.preset
    log_path = os.path.join(tmp, "node.log")
    proc = subprocess.Popen(node_command(params), env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    rclpy.init()
    node = rclpy.create_node("ditta_soak")
    got, statuses = set(), []
    node.create_subscription(Image, "/ditta/semantic", lambda m: got.add(m.header.stamp.sec * 10**9
                                                                         + m.header.stamp.nanosec), 50)
    node.create_subscription(String, "/ditta/status", lambda m: statuses.append(json.loads(m.data)), 50)
    pub = node.create_publisher(Image, "/camera/image_raw", QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    from std_srvs.srv import Trigger

    readapt = node.create_client(Trigger, "/ditta_node/readapt")
    readapt_at = {(j + 1) * args.frames // (args.readapts + 1) for j in range(args.readapts)} if args.adapt else set()
    calls = []

    def spin_until(cond, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end and not cond():
            rclpy.spin_once(node, timeout_sec=0.02)
            if proc.poll() is not None:
                raise RuntimeError("node died:\n" + open(log_path).read()[-3000:])
        return cond()

    samples, lost, t_start = [], 0, None
    try:
        if not spin_until(lambda: pub.get_subscription_count() > 0 and statuses, 300):
            raise RuntimeError("node not ready:\n" + open(log_path).read()[-3000:])
        t_start = time.time()
        for i in tqdm(range(args.frames), desc="soak", unit="frame", mininterval=30):
            m = Image()
            m.header.stamp.sec, m.header.stamp.nanosec = 1000 + i // 1000, (i % 1000) * 10**6
            m.header.frame_id = "camera"
            f = frames[i % len(frames)]
            m.height, m.width, m.encoding, m.step = h, w, "rgb8", w * 3
            m.data = f.tobytes()
            key = m.header.stamp.sec * 10**9 + m.header.stamp.nanosec
            if i in readapt_at:
                fut = readapt.call_async(Trigger.Request())
                spin_until(lambda: fut.done(), 30)
                calls.append({"frame": i, "reply": fut.result().message if fut.done() else "no reply"})
            pub.publish(m)
            if not spin_until(lambda: key in got, 300 if args.adapt and i < 20 else 60):
                lost += 1
            if i % args.sample_every == 0 or i == args.frames - 1:
                samples.append((i, rss_mb(proc.pid)))
        wall = time.time() - t_start
        n_status = len(statuses)
        spin_until(lambda: len(statuses) >= n_status + 2, 10)
        final = statuses[-1]
    finally:
        node.destroy_node()
        rclpy.shutdown()
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    text = open(log_path).read()
    adaptations = {json.dumps(s["last_adaptation"], sort_keys=True) for s in statuses if s.get("last_adaptation")}
    mem = growth(samples, args.frames)
    counts = {"sent": args.frames, "received": len(got), "lost": lost, "frames_in": final["frames_in"],
              "frames_out": final["frames_out"], "dropped": final["dropped"], "bad": final["bad"]}
    counts["in_equals_out"] = (counts["sent"] == counts["received"] == counts["frames_in"] == counts["frames_out"]
                               and counts["dropped"] == 0 and counts["bad"] == 0)
    payload = {"command": " ".join(["python bench/soak.py"] + sys.argv[1:]), "machine": machine(),
               "model": args.model, "backend": args.backend, "adapt": bool(args.adapt), "frame": args.size,
               "wall_seconds": round(wall, 1), "fps": round(args.frames / wall, 2), "memory": mem, "frames": counts,
               "state": final["state"], "by_model": final.get("by_model"), "samples": samples,
               "node_exit": proc.returncode, "preset": args.preset or "the node's default",
               "readapt_calls": calls, "adaptations_finished": len(adaptations),
               "node_error": final.get("error"), "tracebacks_in_log": text.count("Traceback")}
    write_results(args.name, payload)
    report(payload, args.name, RESULTS)


def report(payload: dict, name: str, results: str) -> None:
    """Write ``<name>.png`` (RSS over frames) and ``<name>.md`` from a soak result."""
    import matplotlib
    from common import describe_machine

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples, mem, counts, n = payload["samples"], payload["memory"], payload["frames"], payload["frames"]["sent"]
    fig, ax = plt.subplots(figsize=(8, 3.4))
    ax.plot([s[0] for s in samples], [s[1] for s in samples], lw=1.2)
    ax.axvspan(0, 0.1 * n, color="0.9", label="warm-up (excluded)")
    ax.set_xlabel("frames")
    ax.set_ylabel("node RSS (MiB)")
    ax.set_title(f"ditta_node soak: {payload['model']}, {payload['frame']}, growth {100 * mem['growth']:+.2f} %",
                 fontsize=10)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(os.path.join(results, name + ".png"), dpi=110)
    m = payload["machine"]
    lines = [f"# Soak: ditta_node over real DDS ({describe_machine(m)})", "", f"`{payload['command']}`", "",
             f"{n} frames of {payload['frame']} (CamVid 15 Hz clip, cycled), reliable lockstep replay, model "
             f"{payload['model']}, backend {payload['backend']}, adaptation "
             f"{'on' if payload['adapt'] else 'off (ISS)'}; {payload['wall_seconds']} s, {payload['fps']} fps.", "",
             f"- memory: {mem['baseline_mb']} MiB (frames 10-20 %) -> {mem['final_mb']} MiB (last 10 %), growth "
             f"{100 * mem['growth']:+.2f} % -> {'flat (< 5 %)' if mem['flat'] else 'NOT flat'}",
             f"- frames: sent {counts['sent']}, received {counts['received']}, node in/out {counts['frames_in']}/"
             f"{counts['frames_out']}, dropped {counts['dropped']}, bad {counts['bad']} -> "
             f"{'in = out' if counts['in_equals_out'] else 'MISMATCH'}"]
    if payload.get("adapt"):
        lines += [f"- adaptation (preset {payload.get('preset')}): {len(payload['readapt_calls'])} `~/readapt` calls "
                  f"(frames {', '.join(str(c['frame']) for c in payload['readapt_calls'])}; replies: "
                  f"{'; '.join(sorted({c['reply'] for c in payload['readapt_calls']}))}), "
                  f"{payload['adaptations_finished']} adaptations finished in all, node error "
                  f"{payload['node_error']!r}, tracebacks in the node log: {payload['tracebacks_in_log']}, final state "
                  f"{payload['state']}, label images by model {payload['by_model']}"]
    lines += ["", f"![RSS]({name}.png)"]
    with open(os.path.join(results, name + ".md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
