"""DiTTA distillation targets (paper Sec. 3.2, Eq. 4-5; official ``ditta/sam2_target.py``).

From the frozen ISS predictions and reliability maps of the warm-up frames:

1. **Prompt selection**, frame by frame: the predicted classes ordered by their
   peak reliability; a class whose peak is below the threshold (``thr_first``
   on frame 0, ``thr_later`` after) is skipped; one positive point at the first
   pixel (row-major) holding the peak; skipped when it lies inside a current
   track mask dilated by 5 px (not on frame 0); at most ``max_track`` prompts per
   clip. Every class's pixels are counted for the frequency term whatever happens.
2. **Forward pass** (prompt, record, step to t+1), then a **backward pass**
   replaying the same prompts from the last prompted frame back to frame 0.
   Per frame: forward objects + backward objects not prompted on that frame.
3. **Class vote** (Eq. 4), per object ``o`` and class ``c`` over all frames:
   ``score = mean reliability of c's pixels in o x (|o & c| / |o|)^b x
   (1 - |c| / |clip|)^c_exp`` with ``b = 0.3``, ``c_exp = 0.8``; each object takes its
   argmax class; objects are painted lowest-score first so the strongest wins overlaps.
4. **Per-pixel label** (Eq. 5): the object's class where an object covers the
   pixel, the frozen ISS prediction elsewhere (:meth:`Targets.label`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .propagator import Propagator

IGNORE_INDEX = 255


@dataclass
class TargetConfig:
    """Hyper-parameters of the target builder (official defaults)."""

    max_track: int = 100
    thr_first: float = 0.8
    thr_later: float = 0.8
    b: float = 0.3
    c: float = 0.8
    dilate: int = 5


@dataclass
class Targets:
    """Distillation targets of one warm-up clip.

    Attributes:
        obj_maps: per warm-up frame, int32 ``[H, W]`` object ids (0 = no object),
            painted lowest-score first.
        obj_class: object id -> its class (argmax of the vote).
        scores: object id -> {class: vote score} (Eq. 4).
        prompts: frame -> [(obj_id, x, y)] prompts that were used.
        stats: objects tracked, mean covered-pixel fraction, teacher seconds.
    """

    obj_maps: List[np.ndarray]
    obj_class: Dict[int, int]
    scores: Dict[int, Dict[int, float]] = field(default_factory=dict)
    prompts: Dict[int, List[Tuple[int, int, int]]] = field(default_factory=dict)
    stats: Dict[str, float] = field(default_factory=dict)

    def label(self, t: int, iss_pred: np.ndarray) -> np.ndarray:
        """Eq. 5 label of warm-up frame ``t``: object class under objects, ISS prediction
        elsewhere (int64 ``[H, W]``)."""
        lut = np.full(int(self.obj_maps[t].max()) + 1, -1, np.int64)
        for o, c in self.obj_class.items():
            if o < len(lut):
                lut[o] = c
        cls = lut[self.obj_maps[t]]
        return np.where(cls >= 0, cls, iss_pred.astype(np.int64))

    # -- cache -----------------------------------------------------------------------
    def save(self, path: str) -> None:
        """Write the targets to a compressed ``.npz`` (object maps + JSON metadata)."""
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        meta = {"obj_class": {str(k): v for k, v in self.obj_class.items()},
                "scores": {str(k): {str(c): s for c, s in v.items()} for k, v in self.scores.items()},
                "prompts": {str(k): v for k, v in self.prompts.items()}, "stats": self.stats}
        np.savez_compressed(path, obj_maps=np.stack(self.obj_maps), meta=np.array(json.dumps(meta)))

    @classmethod
    def load(cls, path: str) -> "Targets":
        """Read targets written by :meth:`save`; ``FileNotFoundError`` if missing."""
        d = np.load(path)
        meta = json.loads(str(d["meta"]))
        return cls(obj_maps=list(d["obj_maps"]), obj_class={int(k): int(v) for k, v in meta["obj_class"].items()},
                   scores={int(k): {int(c): float(s) for c, s in v.items()} for k, v in meta["scores"].items()},
                   prompts={int(k): [tuple(p) for p in v] for k, v in meta["prompts"].items()},
                   stats=meta["stats"])


def cache_key(*parts: object) -> str:
    """Stable short hash naming a cache entry (clip, frames, model, teacher, config)."""
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:16]


def _dilate(mask: np.ndarray, iterations: int) -> np.ndarray:
    """Binary dilation with the 4-connected 3x3 cross, ``iterations`` times (what
    ``scipy.ndimage.binary_dilation(mask, iterations=n)`` does)."""
    import cv2

    kernel = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    return cv2.dilate(mask.astype(np.uint8), kernel, iterations=iterations) > 0


def select_prompts(pred: np.ndarray, rel: np.ndarray, threshold: float, occupied: Optional[np.ndarray],
                   budget: int, pixels_per_class: np.ndarray) -> List[Tuple[int, int, int]]:
    """Prompt points of one frame (step 1 of the module docstring).

    Args:
        pred: int ``[H, W]`` ISS classes; rel: float ``[H, W]`` reliability.
        threshold: minimum peak reliability.
        occupied: bool ``[H, W]`` already explained by dilated tracks, or ``None`` (frame 0).
        budget: prompts still allowed.
        pixels_per_class: int ``[C]`` counts, updated in place with this frame.

    Returns:
        ``[(class, x, y)]`` in selection order.
    """
    classes = np.unique(pred)
    peaks = {int(c): float(rel[pred == c].max()) for c in classes}
    order = sorted(peaks, key=lambda c: peaks[c], reverse=True)
    out = []
    for c in order:
        pixels_per_class[c] += int((pred == c).sum())
        if len(out) >= budget or peaks[c] < threshold:
            continue
        ys, xs = np.nonzero((pred == c) & (rel == peaks[c]))
        y, x = int(ys[0]), int(xs[0])
        if occupied is not None and occupied[y, x]:
            continue
        out.append((c, x, y))
    return out


def vote(merged: List[Dict[int, np.ndarray]], preds: Sequence[np.ndarray], rels: Sequence[np.ndarray],
         pixels_per_class: np.ndarray, b: float, c_exp: float) -> Dict[int, Dict[int, float]]:
    """Eq. 4 class scores per object (see module docstring)."""
    pix: Dict[int, Dict[int, int]] = {}
    rsum: Dict[int, Dict[int, float]] = {}
    for t, objs in enumerate(merged):
        for o, mask in objs.items():
            if not mask.any():
                continue
            cls = preds[t][mask]
            r = rels[t][mask]
            counts = np.bincount(cls, minlength=len(pixels_per_class))
            sums = np.bincount(cls, weights=r, minlength=len(pixels_per_class))
            for k in np.nonzero(counts)[0]:
                pix.setdefault(o, {})[int(k)] = pix.get(o, {}).get(int(k), 0) + int(counts[k])
                rsum.setdefault(o, {})[int(k)] = rsum.get(o, {}).get(int(k), 0.0) + float(sums[k])
    total = float(pixels_per_class.sum())
    scores: Dict[int, Dict[int, float]] = {}
    for o, per in pix.items():
        n_obj = sum(per.values())
        scores[o] = {k: (rsum[o][k] / n) * (n / n_obj) ** b * (1 - pixels_per_class[k] / total) ** c_exp
                     for k, n in per.items()}
    return scores


def render(merged: List[Dict[int, np.ndarray]], scores: Dict[int, Dict[int, float]], shape) -> List[np.ndarray]:
    """Object-id maps, lowest-scoring object painted first (so the strongest wins)."""
    maps = []
    for objs in merged:
        m = np.zeros(shape, np.int32)
        for o in sorted(objs, key=lambda o: max(scores.get(o, {0: 0.0}).values())):
            m[objs[o]] = o
        maps.append(m)
    return maps


def build_targets(prop: Propagator, frames: Sequence[np.ndarray], preds: Sequence[np.ndarray],
                  rels: Sequence[np.ndarray], num_classes: int, cfg: TargetConfig = TargetConfig(),
                  progress=None) -> Targets:
    """Run the whole target construction on a warm-up clip.

    Args:
        prop: a propagator backend.
        frames: ``T`` uint8 RGB ``[H, W, 3]`` frames.
        preds: ``T`` int ``[H, W]`` frozen ISS predictions; rels: ``T`` float ``[H, W]`` reliabilities (Eq. 2).
        num_classes: classes of the ISS model.
        cfg: :class:`TargetConfig`.
        progress: optional tqdm-like object, updated once per frame and pass.

    Returns:
        :class:`Targets` (no objects when nothing was prompted).
    """
    t0 = time.perf_counter()
    n = len(frames)
    shape = preds[0].shape
    prop.init(frames)
    pixels_per_class = np.zeros(num_classes, np.int64)
    selected: Dict[int, List[Tuple[int, int, int]]] = {}
    forward: List[Dict[int, np.ndarray]] = []
    next_id, used = 1, 0
    for t in range(n):
        current = prop.masks(t)
        occupied = None
        if t > 0:
            union = np.zeros(shape, bool)
            for m in current.values():
                union |= m
            occupied = _dilate(union, cfg.dilate) if union.any() else union
        picks = select_prompts(preds[t], rels[t], cfg.thr_first if t == 0 else cfg.thr_later, occupied,
                               cfg.max_track - used, pixels_per_class)
        for cls, x, y in picks:
            prop.add_points(t, next_id, np.array([[x, y]], np.float32), np.array([1], np.int32))
            selected.setdefault(t, []).append((next_id, x, y))
            next_id += 1
            used += 1
        forward.append(prop.masks(t))
        if t < n - 1:
            prop.step(t)
        if progress is not None:
            progress.update(1)
    if not selected:
        return Targets([np.zeros(shape, np.int32) for _ in range(n)], {}, stats={
            "objects": 0, "covered_fraction": 0.0, "teacher_seconds": time.perf_counter() - t0})

    last = max(selected)
    backward: Dict[int, Dict[int, np.ndarray]] = {}
    prop.reset()
    for t in range(last, -1, -1):
        for oid, x, y in selected.get(t, []):
            prop.add_points(t, oid, np.array([[x, y]], np.float32), np.array([1], np.int32))
        backward[t] = prop.masks(t)
        if t > 0:
            prop.step(t, reverse=True)
        if progress is not None:
            progress.update(1)

    merged: List[Dict[int, np.ndarray]] = []
    for t in range(n):
        objs = dict(forward[t])
        if t <= last:
            prompted = {oid for oid, _, _ in selected.get(t, [])}
            for oid, m in backward[t].items():
                if oid in prompted:
                    continue
                objs[oid] = objs[oid] | m if oid in objs else m
        merged.append(objs)

    scores = vote(merged, preds, rels, pixels_per_class, cfg.b, cfg.c)
    maps = render(merged, scores, shape)
    obj_class = {o: max(s, key=s.get) for o, s in scores.items() if s and max(s.values()) > 0}
    covered = float(np.mean([(m > 0).mean() for m in maps]))
    return Targets(maps, obj_class, scores, selected, stats={
        "objects": int(next_id - 1), "objects_with_class": len(obj_class), "covered_fraction": covered,
        "teacher_seconds": time.perf_counter() - t0})
