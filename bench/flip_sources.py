"""Diagnostic: where the label flips that the flow branch leaves come from.

The `select` preset serves the ISS (or an adapted decoder) with the flow branch: the Eq. 3 fusion of each frame's
plain probabilities with the previous frame's, moved by optical flow, where the flow is forward-backward consistent
and the frames are at most ``max_gap`` apart. mVC8 loses a pixel whose ground truth stays the same while the
prediction changes. This script counts such changes between consecutive processed frames (not mVC's 8-frame windows;
every labelled frame, warm-up included; ignore pixels left out; a pair with an unlabelled frame skipped). It streams
the ISS twice on the streaming path (torch), without and with the flow branch (no adaptation: what `select` serves
when no decoder candidate wins), at each stride, and splits the flips of consecutive processed frames on pixels whose
ground truth did not change into:

* ``not fused``: the frame was not fused there (forward-backward check failed, or beyond ``max_gap``);
* ``fused, confident``: fused, but the plain branch's Eq. 2 reliability was >= ``tau``, so Eq. 3 kept it;
* ``fused, uncertain``: fused and below ``tau``: the flow branch had its say and the label still changed.

Each class is given for the ISS alone and with the flow branch (the same pixels: the masks come from the flow
run), so the table shows which flips the branch removes and which it cannot reach. ``to right`` is the share of
the flow run's flips whose new label is the ground truth (a flip that corrects an error).

    python bench/flip_sources.py [CLIP] [--strides 1 2 4] [--model M]
    # writes bench/results/flip_sources.{json,md}
"""

from __future__ import annotations

import os
import sys
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

CLASSES = ("not fused", "fused, confident", "fused, uncertain")


def stream(clip_path: str, model: str, stride: int) -> Dict[str, object]:
    """Flip counts of one stride: per class of :data:`CLASSES`, for the ISS alone and with the flow branch."""
    from ditta_ros.adapt import DiTTANet
    from ditta_ros.gates import FlowWarp, beyond_limit
    from ditta_ros.presets import DittaConfig
    from ditta_ros.runtime import FrozenDiTTA, RuntimeOptions
    from ditta_ros.tools.evaluate import prepare_eval

    setup = prepare_eval(clip_path, model, label_map="cityscapes19_to_camvid11", stride=stride)
    clip, bridge = setup.clip, setup.bridge
    interval = 1.0 / float(clip.fps)  # a strided clip's fps is already fps / stride
    flow_cfg = DittaConfig.from_preset("select")
    net = DiTTANet(setup.runner.model)
    served = {"iss": FrozenDiTTA(net, DittaConfig.from_preset("select", tau=0.0), RuntimeOptions(backend="torch")),
              "flow": FrozenDiTTA(net, flow_cfg, RuntimeOptions(backend="torch"))}
    fb = FlowWarp(max_residual=flow_cfg.warp_residual)  # the served branch's DIS flow and checks: its has_prev mask
    counts = {k: {c: 0 for c in CLASSES} for k in served}
    to_right = {c: 0 for c in CLASSES}
    stable = 0
    prev = None
    for i in range(len(clip)):
        frame, label = clip.frame(i), clip.label(i)
        out = {k: m.step(frame, None if i == 0 else interval) for k, m in served.items()}
        preds = {k: bridge.pred(o.labels) for k, o in out.items()}
        dummy = (np.zeros((1, 1, 8, 8), np.float32), np.zeros((1, 1, 8, 8), np.float32),
                 np.ones(frame.shape[:2], np.float32))
        moved = fb(frame, dummy if i else None)
        fused = np.zeros(frame.shape[:2], bool) if moved is None or beyond_limit(interval, served["flow"].max_gap) \
            else moved[2] > 0.5
        if label is None:  # nothing to score against: the next pair starts after this frame
            prev = None
            continue
        gt = bridge.gt(label)
        reliable = out["flow"].confidence >= flow_cfg.tau  # the plain branch's Eq. 2 reliability
        cur = {"gt": gt, "fused": fused, "reliable": reliable, **preds}
        if prev is not None:
            same = (gt == prev["gt"]) & (gt != 255)  # the loader maps ignore to 255
            stable += int(same.sum())
            where = {"not fused": same & ~fused, "fused, confident": same & fused & reliable,
                     "fused, uncertain": same & fused & ~reliable}
            for k in served:
                flips = preds[k] != prev[k]
                for c, m in where.items():
                    counts[k][c] += int((flips & m).sum())
            flips = preds["flow"] != prev["flow"]
            for c, m in where.items():
                to_right[c] += int((flips & m & (preds["flow"] == gt)).sum())
        prev = cur
    return {"stride": stride, "interval_s": interval, "frames": len(clip), "stable_pixels": stable,
            "flips": counts, "flow_flips_to_right": to_right}


def table(rows: List[Dict[str, object]]) -> List[str]:
    out = ["| stride | class | ISS flips, % of stable pixels | with the flow branch | removed "
           "| flow's flips to the right label |", "|---|---|---|---|---|---|"]
    for r in rows:
        for c in CLASSES + ("all",):
            iss = sum(r["flips"]["iss"].values()) if c == "all" else r["flips"]["iss"][c]
            flow = sum(r["flips"]["flow"].values()) if c == "all" else r["flips"]["flow"][c]
            right = sum(r["flow_flips_to_right"].values()) if c == "all" else r["flow_flips_to_right"][c]
            pct = 100.0 / max(r["stable_pixels"], 1)
            out.append(f"| {r['stride']} ({r['interval_s']:.2f} s) | {c} | {iss * pct:.2f} | {flow * pct:.2f} | "
                       f"{(1 - flow / iss) * 100 if iss else 0:.0f} % | {100 * right / flow if flow else 0:.0f} % |")
    return out


def main() -> None:
    from common import SHARED, machine, write_markdown, write_results

    p = __import__("common").clip_parser(__doc__)
    p.set_defaults(clip=os.path.join(SHARED, "data", "camvid_0016E5_15hz"))
    p.add_argument("--model", default="espnetv2-s2.0-cityscapes-1024x512")
    p.add_argument("--strides", type=int, nargs="+", default=[1, 2, 4])
    args = p.parse_args()
    rows = [stream(args.clip, args.model, s) for s in args.strides]
    cmd = "python bench/flip_sources.py " + " ".join(sys.argv[1:])
    write_results("flip_sources", {"model": args.model, "clip": os.path.basename(args.clip.rstrip("/")),
                                   "machine": machine(), "rows": rows, "command": cmd.strip()})
    lines = [f"# Where the flips remain: {args.model} on {os.path.basename(args.clip.rstrip('/'))}", "",
             f"`{cmd.strip()}`", "", "Flips of consecutive processed frames (every labelled frame, warm-up included) "
             "on pixels whose ground truth did not change (ignore pixels left out), as % of those pixels; the ISS on "
             "the streaming path, alone and with "
             "the flow branch (`select`'s serving, no adaptation).", ""] + table(rows)
    write_markdown("flip_sources", lines)  # also prints them


if __name__ == "__main__":
    main()
