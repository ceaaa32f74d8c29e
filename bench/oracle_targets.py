"""Diagnostic: DiTTA's adaptation with *oracle* distillation targets.

Replaces the teacher's targets by the clip's ground truth on the warm-up frames
(:class:`ditta_ros.ditta.OracleDiTTA`) and runs the same adaptation and streaming
as ``--method ditta``. The gap between this row and the
teacher's row separates the adaptation machinery from the teacher's mask quality.

    python bench/oracle_targets.py [CLIP] [--model M] [--label-map L] [--preset default|faithful]
        # bench/results/oracle_targets_<model>.json  (the suite's ``oracle`` method on one clip)
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    from common import RESULTS, clip_parser, machine, write_results
    from ditta_ros.data import open_clip
    from ditta_ros.ditta import OracleDiTTA
    from ditta_ros.presets import PRESETS
    from ditta_ros.tools.evaluate import bridge_label_sets, evaluate_clip
    from ditta_ros.inference import ISSRunner
    from ditta_ros.iss import load_model
    from ditta_ros.labels import load_label_map
    from ditta_ros.protocol import DEFAULT_WARMUP_RATIO

    p = clip_parser(__doc__)
    p.add_argument("--model", default="espnetv2-s2.0-cityscapes-512x256")
    p.add_argument("--label-map", default="cityscapes19_to_camvid11")
    p.add_argument("--warmup-ratio", type=int, default=DEFAULT_WARMUP_RATIO)
    p.add_argument("--preset", default="default", choices=list(PRESETS))
    args = p.parse_args()
    clip = open_clip(args.clip)
    model, info = load_model(args.model)
    lmap = load_label_map(args.label_map)
    bridge = bridge_label_sets(info.label_set, clip.label_set, lmap)
    out = os.path.join(RESULTS, f"oracle_targets_{info.name}")
    method = OracleDiTTA(ISSRunner(model), clip.label, lmap, config=PRESETS[args.preset], progress=False)
    res = evaluate_clip(clip, method, bridge, out, args.warmup_ratio, info={"model": info.name}, overlays=0,
                        progress=False)
    keys = ("mIoU", "wIoU", "mVC8", "mVC16")
    write_results(f"oracle_targets_{info.name}", {"model": info.name, "clip": clip.name, "machine": machine(),
                                                  "preset": args.preset, **{k: res[k] for k in keys},
                                                  "command": "python bench/oracle_targets.py " + " ".join(sys.argv[1:])})
    print({k: round(res[k], 1) for k in keys})


if __name__ == "__main__":
    main()
