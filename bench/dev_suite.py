"""The development suite on the four labelled CamVid clips of ``../shared/data``
(one 15 Hz, three 1 Hz; the 15 Hz clip also at strides 2 and 4, as a node processing 7.5 or 3.75
frames a second sees it): ISS, TENT, DiTTA with the official hyper-parameters
(``ditta@faithful``), DiTTA with the project's defaults (``ditta``) and the oracle
(ground-truth targets through the default adaptation).

    python bench/dev_suite.py [DATA_DIR] [--model M] [--methods ...]
        # writes bench/results/dev_suite_<model>/{suite.json,suite.md,suite.png} (+ per-run folders)

The same as ``ditta suite DATA_DIR --model M --methods ... --out bench/results/dev_suite_<model>``;
see :mod:`ditta_ros.tools.suite` and ``docs/dev_set_rule.md`` for the decision rule.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

DEFAULT_METHODS = ["iss", "tent", "ditta@faithful", "ditta", "oracle"]


def main() -> None:
    from common import RESULTS, SHARED, clip_parser
    from ditta_ros.tools.suite import run_suite

    p = clip_parser(__doc__)
    p.set_defaults(clip=os.path.join(SHARED, "data"))
    p.add_argument("--model", default="espnetv2-s2.0-cityscapes-1024x512")
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    p.add_argument("--force", action="store_true")
    p.add_argument("--fast-strides", type=int, nargs="*", default=[2, 4],
                   help="the video-rate clip also at these strides (a node processing every k-th frame)")
    p.add_argument("--out", help="results folder (default: bench/results/dev_suite_<model>)")
    args = p.parse_args()
    out = args.out or os.path.join(RESULTS, f"dev_suite_{args.model}")
    summary = run_suite(args.clip, args.model, args.methods, out, force=args.force, progress=False,
                        fast_strides=args.fast_strides)
    with open(os.path.join(out, "suite.md")) as f:
        print(f.read())
    print("chosen by the rule:", summary["decision"]["chosen"])


if __name__ == "__main__":
    main()
