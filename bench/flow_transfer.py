"""Diagnostic: how well the flow branch's optical flow moves each class (``docs/dev_set_rule.md``, addendum 17).

No prediction is involved. On every pair of consecutive processed frames of a labelled clip (at each stride), the
previous frame's ground truth is moved to the current frame by dense optical flow (current -> previous, the label at
the moved position, nearest) and scored per class against the current frame's ground truth, over the pixels whose
flow is forward-backward consistent and whose current ground truth is not ignored (a moved label that is ignored, or
that comes from outside the frame, counts as a miss of the current class: alike for every flow). Flows:

* ``served``: what the flow branch uses (:class:`~ditta_ros.gates.FlowWarp`): OpenCV DIS, FAST preset, on the
  half-size grey frame, consistent within 1 px of that frame;
* ``served+mb``: the served flow, also not followed at motion boundaries (:func:`~ditta_ros.gates.off_motion_boundary`,
  addendum 18);
* ``fine``: OpenCV DIS, MEDIUM preset, on the full frame, consistent within 2 px (the same tolerance in frame pixels);
* ``none``: the previous ground truth unmoved, every pixel (a floor).

``consistent %`` is the share of the current frame's pixels whose flow passed the checks; ``boundary rejects %`` (for
``served+mb``) the share of all pixels, and of the pixels of each current ground-truth class, that the motion-boundary
check alone rejects (before the forward-backward check); ``flow ms`` the mean time
of the two DIS calls of one pair on this machine.

    python bench/flow_transfer.py [CLIP] [--strides 1 2]   # writes bench/results/flow_transfer.{json,md}
"""

from __future__ import annotations

import os
import sys
import time
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

#: flow name -> (scale of the frame the flow runs on, OpenCV DIS preset name, forward-backward tolerance in pixels of
#: that frame, whether the motion-boundary check applies too); ``None``: no flow
FLOWS: Dict[str, Optional[Tuple[float, str, float, bool]]] = {
    "served": (0.5, "FAST", 1.0, False), "served+mb": (0.5, "FAST", 1.0, True), "fine": (1.0, "MEDIUM", 2.0, False),
    "none": None}
#: the classes a pooled or smoothed temporal branch loses first (addenda 16, 17)
THIN = ("pole", "sign_symbol", "fence")


def moved_labels(prev_label: np.ndarray, frame: np.ndarray, prev_frame: np.ndarray,
                 spec: Optional[Tuple[float, str, float, bool]],
                 dis) -> Tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """``(moved, ok, seconds, off_boundary)``: ``prev_label`` (uint8 ``[H, W]``) moved to ``frame`` by the flow of
    ``spec`` (nearest label); bool ``[H, W]`` where the flow passes the checks of ``spec`` (forward-backward, and the
    motion-boundary check where ``spec`` asks for it); the seconds of the two flow calls; bool ``[H, W]`` where the
    motion-boundary check alone passes (all True when ``spec`` does not apply it). ``spec`` ``None``: the label
    unmoved, every pixel, 0 s."""
    import cv2

    from ditta_ros.gates import _pixel_grid, fb_consistent, flow_to_grid, off_motion_boundary, small_grey

    h, w = frame.shape[:2]
    if spec is None:
        return prev_label, np.ones((h, w), bool), 0.0, np.ones((h, w), bool)
    scale, _, max_fb, boundary = spec
    grey, other = small_grey(frame, scale), small_grey(prev_frame, scale)
    t0 = time.perf_counter()
    fw, bw = dis.calc(grey, other, None), dis.calc(other, grey, None)
    seconds = time.perf_counter() - t0
    ok = fb_consistent(fw, bw, max_fb)
    off = off_motion_boundary(fw, scale) if boundary else np.ones_like(ok)
    ok &= off
    flow = flow_to_grid(fw, h, w, bilinear_up=True)  # the frame's pixels
    gx, gy = _pixel_grid(h, w)
    moved = cv2.remap(prev_label, gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_NEAREST,
                      borderMode=cv2.BORDER_CONSTANT, borderValue=255)
    ok = cv2.resize(ok, (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
    off = cv2.resize(off, (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
    return moved, ok, seconds, off


def transfer(clip_path: str, stride: int, name: str) -> Dict[str, object]:
    """Per-class IoU of the moved labels of one flow at one stride (module docstring)."""
    import cv2

    from ditta_ros.data import open_clip
    from ditta_ros.metrics import ConfusionMatrix

    clip = open_clip(clip_path, stride=stride)
    classes = list(clip.classes)
    spec = FLOWS[name]
    dis = cv2.DISOpticalFlow_create(getattr(cv2, f"DISOPTICAL_FLOW_PRESET_{spec[1]}")) if spec else None
    cm, covered, total, seconds, pairs = ConfusionMatrix(len(classes)), 0, 0, 0.0, 0
    rejected = np.zeros(len(classes) + 1)  # pixels the motion-boundary check alone rejects: all, then per class
    present = np.zeros(len(classes) + 1)
    prev = None
    for i in range(len(clip)):
        frame, label = clip.frame(i), clip.label(i)
        if label is None:
            prev = None
            continue
        if prev is not None:
            moved, ok, s, off = moved_labels(prev[1], frame, prev[0], spec, dis)
            cm.add(np.where(ok, moved, 255), np.where(ok, label, 255))
            present += np.r_[label.size, np.bincount(label.ravel(), minlength=256)[:len(classes)]]
            rejected += np.r_[(~off).sum(), np.bincount(label[~off], minlength=256)[:len(classes)]]
            covered, total, seconds, pairs = covered + int(ok.sum()), total + ok.size, seconds + s, pairs + 1
        prev = (frame, label)
    iou = cm.iou()
    per_class = {c: round(100 * float(v), 1) if np.isfinite(v) else None for c, v in zip(classes, iou)}
    thin = [per_class[c] for c in THIN if per_class.get(c) is not None]
    return {"stride": stride, "flow": name, "pairs": pairs, "per_class_iou": per_class,
            "miou": round(100 * cm.miou(), 1), "thin_mean_iou": round(float(np.mean(thin)), 1) if thin else None,
            "consistent_pct": round(100 * covered / max(total, 1), 1),
            "flow_ms": round(1000 * seconds / max(pairs, 1), 1),
            "boundary_rejects_pct": round(100 * rejected[0] / max(present[0], 1), 1) if spec and spec[3] else None,
            "boundary_rejects_pct_per_class": {c: round(100 * rejected[k + 1] / present[k + 1], 1)
                                               for k, c in enumerate(classes) if present[k + 1] and spec and spec[3]}}


def table(rows: List[Dict[str, object]]) -> List[str]:
    classes = list(rows[0]["per_class_iou"])
    out = ["| stride | flow | consistent % | boundary rejects % (all / pole) | flow ms | mIoU | thin mean | "
           + " | ".join(classes) + " |", "|---|---|---|---|---|---|---|" + "---|" * len(classes)]
    for r in rows:
        cells = " | ".join("-" if r["per_class_iou"][c] is None else f"{r['per_class_iou'][c]:.1f}" for c in classes)
        rej = "-" if r.get("boundary_rejects_pct") is None else \
            f"{r['boundary_rejects_pct']:.1f} / {r['boundary_rejects_pct_per_class'].get('pole', float('nan')):.1f}"
        out.append(f"| {r['stride']} | {r['flow']} | {r['consistent_pct']:.1f} | {rej} | {r['flow_ms']:.1f} | "
                   f"{r['miou']:.1f} "
                   f"| {r['thin_mean_iou']} | {cells} |")
    return out


def main() -> None:
    from common import SHARED, clip_parser, machine, write_markdown, write_results
    from ditta_ros.tools.machine import describe

    p = clip_parser(__doc__)
    p.set_defaults(clip=os.path.join(SHARED, "data", "camvid_0016E5_15hz"))
    p.add_argument("--strides", type=int, nargs="+", default=[1, 2])
    args = p.parse_args()
    rows = [transfer(args.clip, s, f) for s in args.strides for f in FLOWS]
    cmd = ("python bench/flow_transfer.py " + " ".join(sys.argv[1:])).strip()
    m = machine()
    write_results("flow_transfer", {"clip": os.path.basename(args.clip.rstrip("/")), "machine": m, "rows": rows,
                                    "command": cmd})
    lines = [f"# How well the flow moves each class: {os.path.basename(args.clip.rstrip('/'))}", "", f"`{cmd}`", "",
             "The previous processed frame's ground truth moved by the flow and scored per class against the current "
             "frame's, over the pixels whose flow passes the checks (forward-backward; `served+mb` also the "
             "motion-boundary check) (IoU %; `none`: unmoved, every pixel). `boundary rejects %`: the share of all "
             "pixels, and of the current frame's pole pixels, that the motion-boundary check alone rejects. "
             f"`thin mean`: pole, sign_symbol, fence. Machine: {describe(m)}.", ""] + table(rows)
    write_markdown("flow_transfer", lines)


if __name__ == "__main__":
    main()
