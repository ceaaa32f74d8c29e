"""Run every method on one clip with `ditta eval` and write one comparison table.

    python bench/compare_methods.py [CLIP] [--model M] [--label-map L] [--methods iss tent zs-refine ditta]
        [--reuse]        # keep a method's existing result.json instead of re-running it

A run may also be ``NAME=METHOD FLAGS...`` (quoted), e.g. ``"ditta-corrected=ditta --loss-mode corrected"``
for ablations.

Writes bench/results/compare_<clip>/<method>/ (each run's outputs) and
bench/results/compare_<clip>.{json,md}: method, mIoU, wIoU, mVC8, mVC16, fps, adaptation seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

KEYS = ("mIoU", "wIoU", "mVC8", "mVC16", "fps", "adapt_seconds")


def main() -> None:
    from common import RESULTS, clip_parser, machine, write_results
    from ditta_ros.tools.cli import main as ditta

    p = clip_parser(__doc__)
    p.add_argument("--model", default="espnetv2-s2.0-cityscapes-1024x512")
    p.add_argument("--label-map", default="cityscapes19_to_camvid11")
    p.add_argument("--methods", nargs="+", default=["iss", "tent", "zs-refine", "ditta"])
    p.add_argument("--name", default="compare_camvid", help="results folder / table name")
    p.add_argument("--reuse", action="store_true")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `ditta eval` flags")
    args = p.parse_args()
    rows = []
    for run in args.methods:
        name, _, spec = run.partition("=")
        method, *flags = (spec or name).split()
        out = os.path.join(RESULTS, args.name, name)
        res_path = os.path.join(out, "result.json")
        if not (args.reuse and os.path.isfile(res_path)):
            rc = ditta(["eval", args.clip, "--model", args.model, "--label-map", args.label_map, "--method", method,
                        "--overlays", "0", "--no-progress", "--out", out, *flags, *args.extra])
            if rc:
                raise SystemExit(f"ditta eval {run} failed ({rc})")
        res = json.load(open(res_path))
        rows.append({"method": name, **{k: res.get(k) for k in KEYS}, "teacher_seconds": res.get("teacher_seconds"),
                     "eval_frames": res.get("eval_frames"), "warmup_frames": res.get("warmup_frames"),
                     "warmup_ratio": res.get("warmup_ratio")})
    path = write_results(args.name, {"clip": args.clip, "model": args.model, "label_map": args.label_map,
                                     "machine": machine(), "rows": rows,
                                     "command": "python bench/compare_methods.py " + " ".join(sys.argv[1:])})
    fmt = lambda v, d=1: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    md = [f"Model {args.model}, clip {os.path.basename(os.path.normpath(args.clip))}, W2F {rows[0]['warmup_ratio']}% "
          f"({rows[0]['warmup_frames']} warm-up, {rows[0]['eval_frames']} evaluated frames).", "",
          "| method | mIoU | wIoU | mVC8 | mVC16 | fps | adaptation s |", "|---|---|---|---|---|---|---|"]
    md += [f"| {r['method']} | {fmt(r['mIoU'])} | {fmt(r['wIoU'])} | {fmt(r['mVC8'])} | {fmt(r['mVC16'])} | "
           f"{fmt(r['fps'], 2)} | {fmt(r['adapt_seconds'])} |" for r in rows]
    with open(path.replace(".json", ".md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
