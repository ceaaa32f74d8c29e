"""Diagnostic: DiTTA's adaptation with *oracle* distillation targets.

Replaces the teacher's targets by the clip's ground truth on the warm-up frames
(labels mapped back to the model's label set through the first source class of
each target class; ignore pixels keep the ISS prediction; objects = per-class
8-connected ground-truth components >= 0.5% of the image) and runs the same
adaptation and streaming as ``--method ditta``. The gap between this row and the
teacher's row separates the adaptation machinery from the teacher's mask quality.

    python bench/oracle_targets.py [CLIP] [--model M] [--label-map L]   # bench/results/oracle_targets_<model>.json
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    import numpy as np

    from common import RESULTS, clip_parser, machine, write_results
    from ditta_ros.adapt import DiTTANet, adapt
    from ditta_ros.baselines.zs_refine import components
    from ditta_ros.data import open_clip
    from ditta_ros.ditta import DiTTAMethod
    from ditta_ros.evaluate import bridge_label_sets, evaluate_clip
    from ditta_ros.inference import ISSRunner
    from ditta_ros.iss import load_model
    from ditta_ros.labels import UNMAPPED, load_label_map

    p = clip_parser(__doc__)
    p.add_argument("--model", default="espnetv2-s2.0-cityscapes-512x256")
    p.add_argument("--label-map", default="cityscapes19_to_camvid11")
    p.add_argument("--warmup-ratio", type=int, default=10)
    args = p.parse_args()
    clip = open_clip(args.clip)
    model, info = load_model(args.model)
    lmap = load_label_map(args.label_map)
    inverse = np.full(256, 255, np.int64)  # target id -> first source id mapped to it
    for src in range(lmap.source.num_classes - 1, -1, -1):
        if lmap.lut[src] != UNMAPPED:
            inverse[lmap.lut[src]] = src

    class OracleDiTTA(DiTTAMethod):
        name = "ditta-oracle-targets"

        def adapt(self, frames):
            encoded, input_hw, preds, _ = self.iss_warmup(frames)
            labels, objs = [], []
            for t in range(len(frames)):
                gt = clip.label(t).astype(np.int64)
                mapped = inverse[gt]
                labels.append(np.where(mapped == 255, preds[t], mapped))
                om = np.zeros(gt.shape, np.int32)
                for k, (m, c, _) in enumerate(components(np.where(gt == 255, -1, gt), np.ones(gt.shape), 0.005), 1):
                    if c >= 0:
                        om[m] = k
                objs.append(om)
            self.net, losses = adapt(DiTTANet(self.runner.model), encoded, input_hw, labels, objs, self.adapt_cfg)
            self._last_warm = frames[-1]
            return {"losses": losses}

    bridge = bridge_label_sets(info.label_set, clip.label_set, lmap)
    out = os.path.join(RESULTS, f"oracle_targets_{info.name}")
    res = evaluate_clip(clip, OracleDiTTA(ISSRunner(model), None, progress=False), bridge, out,
                        args.warmup_ratio, info={"model": info.name}, overlays=0, progress=False)
    keys = ("mIoU", "wIoU", "mVC8", "mVC16")
    write_results(f"oracle_targets_{info.name}", {"model": info.name, "clip": clip.name, "machine": machine(),
                                                  **{k: res[k] for k in keys},
                                                  "command": "python bench/oracle_targets.py " + " ".join(sys.argv[1:])})
    print({k: round(res[k], 1) for k in keys})


if __name__ == "__main__":
    main()
