"""Benchmark helper: the label images the node's frame loop serves, to compare two checkouts (an A/B of
releases: issue 20's "labels identical on the streamed frames").

The node's own loop without ROS (:class:`~ditta_ros.live.FrameLoop` over a :class:`~ditta_ros.live.LivePipeline`,
the same objects as ``bench/pipeline_speed.py``) streams the pre-trained network with the flow branch, saved as an
adaptation (what ``select`` serves when no decoder candidate wins), over the clip's first frames stamped at its
rate, one frame at a time; the labels are written to an ``.npz``. Run it on each checkout with that checkout
on ``PYTHONPATH`` (same environment), then ``--compare`` the two files: frames and pixels that differ.

    PYTHONPATH=<checkout> python bench/served_labels.py [CLIP] [--frames 60] --out labels_<name>.npz
    python bench/served_labels.py --compare labels_a.npz labels_b.npz [--name served_labels_ab]
    # writes bench/results/<name>.{json,md}
"""

from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def serve(args) -> None:
    """Stream the clip through the frame loop and save the labels (and the backend that served them)."""
    import numpy as np

    from common import first_frames, iss_flow_live
    from pipeline_speed import run_loop

    clip, frames, fps = first_frames(args.clip, args.frames)
    hw = frames[0].shape[:2]
    live = iss_flow_live(args.model, hw, fps, tempfile.mkdtemp(prefix="served_labels_"))[2]()
    _, labels, _ = run_loop(live, frames, [10.0 + i / fps for i in range(len(frames))], paced=True)
    np.savez_compressed(args.out, labels=np.stack(labels), backend=live.serving.frozen.describe(), clip=clip.name)
    print(f"{len(labels)} label images from {live.serving.frozen.describe()} -> {args.out}")


def compare(args) -> None:
    """Frames and pixels that differ between two saved label stacks; results file."""
    import numpy as np

    from common import cap_prefix, describe_machine, machine, write_markdown, write_results

    a, b = (np.load(p) for p in args.compare)
    la, lb = a["labels"], b["labels"]
    if la.shape != lb.shape:
        raise SystemExit(f"different stacks: {la.shape} against {lb.shape}")
    same = int(sum(np.array_equal(x, y) for x, y in zip(la, lb)))
    pixels = float(np.mean(la != lb))
    m = machine()
    res = {"files": args.compare, "backends": [str(a["backend"]), str(b["backend"])], "clip": str(a["clip"]),
           "frames": int(la.shape[0]), "identical_frames": same, "differing_pixel_share": pixels, "machine": m,
           "command": cap_prefix() + "python bench/served_labels.py " + " ".join(sys.argv[1:])}
    write_results(args.name, res)
    write_markdown(args.name, [f"# Served labels, A/B ({describe_machine(m)})", "", f"`{res['command']}`", "",
                               f"{res['clip']}, {res['frames']} frames served one at a time by the node's frame loop "
                               f"(`{res['backends'][0]}` against `{res['backends'][1]}`): identical label images on "
                               f"**{same}/{res['frames']}** frames, {100 * pixels:.4f} % of the pixels differ."])


def main() -> None:
    from common import DEFAULT_CLIP, clip_parser

    p = clip_parser(__doc__)
    p.set_defaults(clip=DEFAULT_CLIP)
    p.add_argument("--model", default="espnetv2-s2.0-cityscapes-1024x512")
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--out", default="served_labels.npz")
    p.add_argument("--compare", nargs=2, metavar="NPZ")
    p.add_argument("--name", default="served_labels_ab")
    args = p.parse_args()
    compare(args) if args.compare else serve(args)


if __name__ == "__main__":
    main()
