"""Offline evaluation of a method on one clip (the engine behind ``ditta eval``).

:func:`prepare_eval` opens the clip, the model and the label map; :func:`run_eval` builds
the method (:func:`ditta_ros.tools.methods.make_method`) and evaluates it: what ``ditta eval``
and ``ditta compare`` run. :func:`evaluate_clip` applies the protocol (W2F split), lets
the method adapt on the warm-up frames, streams the evaluation frames through it, maps
predictions to the clip's label set, accumulates the metrics and writes:

* ``result.json`` -- ``method``, ``model``, ``clip``, ``frames``, ``warmup_frames``,
  ``eval_frames``, ``mIoU``, ``wIoU``, ``mVC8``, ``mVC16`` (percent, as the paper),
  ``fps`` (method inference on the evaluation frames, preprocessing and resize
  included, disk reads and metrics excluded), ``device``, ``per_class_iou`` and
  whatever the method reports (e.g. ``adapt_seconds``);
* ``per_frame.csv`` -- frame index, per-frame mIoU, pixel accuracy, latency ms;
* ``per_frame_miou.png`` -- the per-frame mIoU curve;
* ``samples.npz`` -- ``confusion`` int64 ``[F, K, K + 1]`` per labelled evaluation frame
  (rows = ground truth, last column = unmapped predictions) and ``vc{n}`` float ``[F - n]`` per-window consistency
  scores: what a paired bootstrap between two methods resamples;
* ``overlays/frame_NNNNNN.png`` -- frame | prediction | ground truth for a few frames.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional

import numpy as np

from ..data import Clip
from ..inference import ISSRunner
from ..iss import ModelInfo
from ..labels import IGNORE_INDEX, LabelMap, LabelSet, get_label_set
from ..metrics import ConfusionMatrix, consistency_windows, frame_miou, summarize
from ..protocol import DEFAULT_WARMUP_RATIO, Method, w2f_split
from .machine import cpu_flags, cpu_model, isa_limits

log = logging.getLogger("ditta.eval")


class LabelSetMismatch(ValueError):
    """The model's label set cannot be compared with the clip's."""


@dataclass
class LabelBridge:
    """How predictions (model label set) and ground truth (clip label set) meet."""

    eval_set: LabelSet
    pred_map: Optional[LabelMap] = None
    gt_map: Optional[LabelMap] = None

    def pred(self, labels: np.ndarray) -> np.ndarray:
        return self.pred_map(labels) if self.pred_map is not None else labels

    def gt(self, labels: np.ndarray) -> np.ndarray:
        return self.gt_map(labels) if self.gt_map is not None else labels


def bridge_label_sets(model_set: str, clip_set: Optional[str], label_map: Optional[LabelMap],
                      clip_classes=None) -> LabelBridge:
    """Check that a model's outputs can be scored against a clip's labels.

    * no map: the model's and the clip's label sets must be the same;
    * a map ``A -> B``: ``A`` must be the model's set; the clip must be labelled in
      ``B``, or in ``A`` (then its ground truth is mapped too).

    Raises:
        LabelSetMismatch: with what to pass instead.
    """
    if label_map is None:
        if clip_set is not None and clip_set != model_set:
            raise LabelSetMismatch(f"label-set mismatch: the model predicts {model_set}, the clip is labelled "
                                   f"{clip_set}; pass --label-map (e.g. {model_set}_to_{clip_set})")
        return LabelBridge(get_label_set(clip_set or model_set, clip_classes))
    if label_map.source.name != model_set:
        raise LabelSetMismatch(f"label map {label_map.name} maps from {label_map.source.name}, but the model "
                               f"predicts {model_set}")
    if clip_set in (None, label_map.target.name):
        return LabelBridge(label_map.target, pred_map=label_map)
    if clip_set == label_map.source.name:
        return LabelBridge(label_map.target, pred_map=label_map, gt_map=label_map)
    raise LabelSetMismatch(f"label map {label_map.name} maps to {label_map.target.name}, but the clip is "
                           f"labelled {clip_set}")


def _overlay_panel(frame: np.ndarray, pred: np.ndarray, gt: Optional[np.ndarray], label_set: LabelSet) -> np.ndarray:
    panels = [frame, (0.4 * frame + 0.6 * label_set.colorize(pred)).astype(np.uint8)]
    if gt is not None:
        panels.append(label_set.colorize(gt))
    return np.concatenate(panels, axis=1)


def _plot_per_frame(rows: List[Dict[str, float]], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = [r["frame"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.plot(idx, [r["mIoU"] for r in rows], lw=1.2)
    ax.set_xlabel("frame")
    ax.set_ylabel("per-frame mIoU (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluate_clip(clip: Clip, method: Method, bridge: LabelBridge, out_dir: str,
                  warmup_ratio: int = DEFAULT_WARMUP_RATIO,
                  info: Optional[Dict[str, object]] = None, overlays: int = 4, progress: bool = True,
                  windows=(8, 16)) -> Dict[str, object]:
    """Run ``method`` on ``clip`` under W2F and write the outputs listed in the module docstring.

    Args:
        clip: an opened clip with labels on (some of) its evaluation frames.
        method: the method (adapts on the warm-up, then streams).
        bridge: label-set bridge from :func:`bridge_label_sets`.
        out_dir: output folder (created).
        warmup_ratio: W2F warm-up percentage (100 = full-video protocol).
        info: extra fields for result.json (model name, device, ...).
        overlays: number of overlay images to write (evenly spaced).

    Returns:
        the result dict that was written to ``result.json``.

    Raises:
        ValueError: the clip has no labelled evaluation frame.
    """
    from tqdm import tqdm

    os.makedirs(out_dir, exist_ok=True)
    split = w2f_split(len(clip), warmup_ratio)
    result: Dict[str, object] = dict(info or {})
    result.update(method=method.name, clip=clip.name, frames=len(clip), warmup_ratio=int(warmup_ratio),
                  warmup_frames=len(split.warmup), eval_frames=len(split.evaluate))

    t0 = time.perf_counter()
    method.frame_interval = 1.0 / clip.fps if getattr(clip, "fps", 0) else None
    warm = [clip.frame(i) for i in split.warmup]
    stats = method.adapt(warm)
    del warm
    result.update(stats)
    result.setdefault("adapt_seconds", round(time.perf_counter() - t0, 3))

    n_cls = bridge.eval_set.num_classes
    total = ConfusionMatrix(n_cls)
    preds: List[np.ndarray] = []
    gts: List[np.ndarray] = []
    rows: List[Dict[str, float]] = []
    frame_cms: List[np.ndarray] = []
    overlay_at = set(np.linspace(split.evaluate[0], split.evaluate[-1], num=max(overlays, 0), dtype=int).tolist()) \
        if overlays else set()
    if overlays:
        os.makedirs(os.path.join(out_dir, "overlays"), exist_ok=True)
    t = time.perf_counter()
    method.start_stream(_LazyFrames(clip, split.evaluate))
    setup_s = time.perf_counter() - t
    infer_s = setup_s
    for i in tqdm(split.evaluate, desc=f"{method.name} {clip.name}", disable=not progress, unit="frame"):
        frame = clip.frame(i)
        t = time.perf_counter()
        out = method.predict(frame)
        dt = time.perf_counter() - t
        infer_s += dt
        pred = bridge.pred(out.labels)
        raw_gt = clip.label(i)
        if raw_gt is None:
            continue
        gt = bridge.gt(raw_gt)
        if gt.shape != pred.shape:
            raise ValueError(f"frame {i}: label {gt.shape} and frame {pred.shape} sizes differ")
        before = np.concatenate([total.matrix, total.unmapped[:, None]], 1)
        total.add(pred, gt)
        frame_cms.append(np.concatenate([total.matrix, total.unmapped[:, None]], 1) - before)
        preds.append(pred)
        gts.append(gt)
        valid = gt != IGNORE_INDEX
        rows.append({"frame": i, "mIoU": 100 * frame_miou(pred, gt, n_cls),
                     "pixel_acc": 100 * float((pred[valid] == gt[valid]).mean()) if valid.any() else float("nan"),
                     "latency_ms": 1000 * dt})
        if i in overlay_at:
            import cv2

            panel = _overlay_panel(frame, pred, gt, bridge.eval_set)
            cv2.imwrite(os.path.join(out_dir, "overlays", f"frame_{i:06d}.png"), panel[:, :, ::-1])
    if not rows:
        raise ValueError(f"clip {clip.name} has no labelled evaluation frame")
    if hasattr(method, "stream_stats"):  # fused share, processed-frame gap (DiTTA)
        result.update(method.stream_stats())

    iou = total.iou()
    result.update({
        **summarize(total, preds, gts, windows),
        "pixel_accuracy": 100 * total.pixel_accuracy(),
        "fps": len(split.evaluate) / infer_s if infer_s > 0 else float("nan"),
        "stream_setup_seconds": setup_s,
        "latency_ms_median": float(np.median([r["latency_ms"] for r in rows])),
        "labelled_eval_frames": len(rows),
        "label_set": bridge.eval_set.name,
        "per_class_iou": {name: (None if np.isnan(v) else 100 * float(v))
                          for name, v in zip(bridge.eval_set.classes, iou)},
        "host": platform.node(), "cpu_threads": _threads(), "cpu": cpu_model(), "cpu_flags": cpu_flags(),
        "isa_limits": isa_limits(),
    })
    with open(os.path.join(out_dir, "result.json"), "w") as f:
        json.dump(_jsonable(result), f, indent=2)
    np.savez_compressed(os.path.join(out_dir, "samples.npz"), confusion=np.stack(frame_cms),
                        **{f"vc{n}": np.asarray(consistency_windows(preds, gts, n), np.float64) for n in windows})
    with open(os.path.join(out_dir, "per_frame.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["frame", "mIoU", "pixel_acc", "latency_ms"])
        w.writeheader()
        for r in rows:
            w.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
    _plot_per_frame(rows, os.path.join(out_dir, "per_frame_miou.png"),
                    f"{method.name} on {clip.name}: mIoU {result['mIoU']:.1f}%")
    return result


@dataclass
class EvalSetup:
    """What :func:`prepare_eval` opened: the clip (``path``, ``max_frames`` as asked), the
    model's runner and card info, the label bridge and the label map (or ``None``)."""

    path: str
    max_frames: Optional[int]
    clip: Clip
    runner: ISSRunner
    info: ModelInfo
    bridge: LabelBridge
    label_map: Optional[LabelMap]
    stride: int = 1


def prepare_eval(clip_path: str, model: str, label_map: Optional[str] = None, max_frames: Optional[int] = None,
                 device: str = "cpu", stride: int = 1) -> EvalSetup:
    """Open the clip (its first ``max_frames``, then every ``stride``-th frame, warm-up included, as a
    node processing ``fps / stride`` frames a second sees it: :class:`~ditta_ros.data.StridedClip`),
    load the model onto ``device`` and the label map (name or YAML file), and check that they meet
    (:func:`bridge_label_sets`).

    Raises:
        FileNotFoundError: clip or weights missing; ValueError / KeyError: unknown model or
            label map, :class:`LabelSetMismatch`.
    """
    from ..data import open_clip
    from ..iss import load_model
    from ..labels import load_label_map

    clip = open_clip(clip_path, max_frames, stride)
    net, info = load_model(model)
    lmap = load_label_map(label_map) if label_map else None
    bridge = bridge_label_sets(info.label_set, clip.label_set, lmap, clip.classes)
    return EvalSetup(clip_path, max_frames, clip, ISSRunner(net, device=device), info, bridge, lmap, stride)


def run_eval(setup: EvalSetup, method: str, out_dir: str, options: Optional[Mapping[str, object]] = None,
             warmup_ratio: int = DEFAULT_WARMUP_RATIO, overlays: int = 4, progress: bool = True) -> Dict[str, object]:
    """``ditta eval``: build ``method`` around ``setup.runner`` with ``options`` (exactly the
    :func:`~ditta_ros.tools.methods.make_method` options it takes) and evaluate it on ``setup.clip``
    into ``out_dir`` (:func:`evaluate_clip`). A ``ditta`` run without a ``cache_tag`` option
    keys its cached distillation targets by model, clip path, ``max_frames`` and warm-up ratio.

    Returns:
        the result dict (also in ``out_dir/result.json``).

    Raises:
        ValueError: unknown method, or as :func:`evaluate_clip`; TypeError: an option the
            method does not take.
    """
    from .methods import make_method

    opts = dict(options or {})
    if method == "ditta":
        opts.setdefault("cache_tag", f"{setup.info.name}|{os.path.abspath(setup.path)}|{setup.max_frames}|"
                                     f"{warmup_ratio}" + (f"|s{setup.stride}" if setup.stride != 1 else ""))
    m = make_method(method, setup.runner, **opts)
    log.info("%s on %s (%d frames), model %s [%s], eval label set %s, device %s", method, setup.clip.name,
             len(setup.clip), setup.info.name, setup.info.family, setup.bridge.eval_set.name, setup.runner.device)
    info = {"model": setup.info.name, "family": setup.info.family, "device": str(setup.runner.device),
            "backend": opts["runtime"].backend if "runtime" in opts else "torch", "stride": setup.stride, "label_map": setup.label_map.name if setup.label_map else None}
    return evaluate_clip(setup.clip, m, setup.bridge, out_dir, warmup_ratio=warmup_ratio, info=info,
                         overlays=overlays, progress=progress)


class _LazyFrames:
    """Read-on-demand sequence of a clip's frames at given indices."""

    def __init__(self, clip: Clip, indices):
        self.clip, self.indices = clip, list(indices)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, k):
        return self.clip.frame(self.indices[k])


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return None if np.isnan(v) else round(v, 4)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
