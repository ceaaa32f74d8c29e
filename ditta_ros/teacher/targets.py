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

Options that keep the targets from being worse than the ISS where the ISS is sure
(all off in the ``faithful`` configuration, :data:`FAITHFUL_TARGETS`; each is
independent and label-free; the defaults turn on the first, second, fourth and fifth):

* ``candidate`` -- which of a multimask teacher's candidates an object takes:
  ``"backend"`` (the teacher's own choice; for SAM the best predicted IoU of the
  multimask tokens for a click, the single-mask token with a box), or
  ``"iou_purity"``: for a click of class ``c``, the multimask candidate maximising
  predicted IoU x the share of its pixels the ISS labels ``c``; for a propagated
  object, the candidate maximising predicted IoU x its IoU with the object's mask on
  the frame it comes from (the object keeps the granularity it was given);
* ``purity_gate`` -- an object whose winning class covers less than this share of
  its pixels (all frames, ISS labels) is dropped;
* ``drift_cut`` -- on a frame where an object's winning class covers less than this
  share of its mask, the object is removed from that frame (a track that drifted);
* ``rel_gate`` -- the teacher overrides the ISS only where the ISS reliability
  (Eq. 2) is below this value;
* ``thin_px`` -- ISS regions at most this many pixels thick (what a morphological
  opening with a ``(thin_px + 1)`` square removes) keep the ISS label;
* ``temporal_vote`` (off by default; ``docs/dev_set_rule.md`` addendum 10) -- before the teacher runs,
  each warm-up frame's ISS labels and reliabilities are replaced by a reliability-weighted vote of the
  frame and of the warm-up frames within the fusion limit, moved by optical flow
  (:func:`ditta_ros.teacher.temporal.temporal_vote`, applied by :meth:`ditta_ros.ditta.DiTTAMethod.make_targets`).

:attr:`Targets.report` is the label-free target report: the share of pixels whose
label differs from the ISS (all and per ISS class), objects kept and dropped, the
teacher's seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .propagator import Candidates, Propagator

IGNORE_INDEX = 255
CANDIDATE_RULES = ("backend", "iou_purity")


@dataclass(frozen=True)
class TargetConfig:
    """Hyper-parameters of the target builder (module docstring).

    ``max_track``, ``thr_first``, ``thr_later``, ``b``, ``c``, ``dilate`` are the official
    ones; ``candidate``, ``purity_gate``, ``drift_cut``, ``rel_gate``, ``thin_px``, ``temporal_vote`` are ours
    (0 = off). The defaults are the project's (``docs/dev_set_rule.md``: candidate by
    predicted IoU x ISS purity, purity gate 0.8, reliability gate 0.8, 4-px thin
    structures); :data:`FAITHFUL_TARGETS` is the official builder.

    Raises:
        ValueError: unknown ``candidate`` rule, or a gate outside [0, 1].
    """

    max_track: int = 100
    thr_first: float = 0.8
    thr_later: float = 0.8
    b: float = 0.3
    c: float = 0.8
    dilate: int = 5
    candidate: str = "iou_purity"
    purity_gate: float = 0.8
    drift_cut: float = 0.0
    rel_gate: float = 0.8
    thin_px: int = 4
    temporal_vote: bool = False

    def __post_init__(self):
        if self.candidate not in CANDIDATE_RULES:
            raise ValueError(f"candidate must be one of {CANDIDATE_RULES}, got {self.candidate!r}")
        for k in ("purity_gate", "drift_cut", "rel_gate"):
            if not 0.0 <= getattr(self, k) <= 1.0:
                raise ValueError(f"{k} must lie in [0, 1], got {getattr(self, k)}")
        if self.thin_px < 0:
            raise ValueError(f"thin_px must be >= 0, got {self.thin_px}")


#: the official target builder (every option of ours off)
FAITHFUL_TARGETS = TargetConfig(candidate="backend", purity_gate=0.0, drift_cut=0.0, rel_gate=0.0, thin_px=0)


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
        labels: per warm-up frame, the final int64 ``[H, W]`` labels with the gates of
            the config applied (``None`` for targets built before the gates existed).
        report: the label-free target report (module docstring).
    """

    obj_maps: List[np.ndarray]
    obj_class: Dict[int, int]
    scores: Dict[int, Dict[int, float]] = field(default_factory=dict)
    prompts: Dict[int, List[Tuple[int, int, int]]] = field(default_factory=dict)
    stats: Dict[str, float] = field(default_factory=dict)
    labels: Optional[List[np.ndarray]] = None
    report: Dict[str, object] = field(default_factory=dict)

    def label(self, t: int, iss_pred: np.ndarray) -> np.ndarray:
        """Label of warm-up frame ``t`` (int64 ``[H, W]``): the gated labels when the
        builder made them, else Eq. 5 (object class under objects, ISS elsewhere)."""
        if self.labels is not None:
            return self.labels[t].astype(np.int64)
        return self.eq5(t, iss_pred)

    def eq5(self, t: int, iss_pred: np.ndarray) -> np.ndarray:
        """Plain Eq. 5 label of frame ``t``: object class under objects, ISS prediction elsewhere."""
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
                "prompts": {str(k): v for k, v in self.prompts.items()}, "stats": self.stats, "report": self.report}
        extra = {"labels": np.stack(self.labels).astype(np.uint8 if max(int(x.max()) for x in self.labels) < 256
                                                         else np.int32)} if self.labels else {}
        np.savez_compressed(path, obj_maps=np.stack(self.obj_maps), meta=np.array(json.dumps(meta)), **extra)

    @classmethod
    def load(cls, path: str) -> "Targets":
        """Read targets written by :meth:`save`; ``FileNotFoundError`` if missing."""
        d = np.load(path)
        meta = json.loads(str(d["meta"]))
        return cls(obj_maps=list(d["obj_maps"]), obj_class={int(k): int(v) for k, v in meta["obj_class"].items()},
                   scores={int(k): {int(c): float(s) for c, s in v.items()} for k, v in meta["scores"].items()},
                   prompts={int(k): [tuple(p) for p in v] for k, v in meta["prompts"].items()},
                   stats=meta["stats"], labels=list(d["labels"].astype(np.int64)) if "labels" in d else None,
                   report=meta.get("report", {}))


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


def make_chooser(rule: str, preds: Sequence[np.ndarray], obj_class: Dict[int, int]):
    """The candidate rule ``rule`` as a :data:`~ditta_ros.teacher.propagator.Chooser`
    (``None`` for ``"backend"``); see the module docstring.

    Args:
        preds: the ISS predictions of the warm-up frames (purity of a click's candidates).
        obj_class: object id -> the ISS class it was prompted on (filled by the builder
            before each click).
    """
    if rule == "backend":
        return None

    def choose(t: int, obj_id: int, cand: Candidates, previous: Optional[np.ndarray]) -> int:
        k = len(cand.iou)
        if previous is None:  # a click: multimask tokens, predicted IoU x ISS class purity
            idx = list(range(1, k)) if k > 1 else [0]
            cls = obj_class.get(obj_id)
            score = []
            for i in idx:
                m = cand.masks[i]
                area = int(m.sum())
                purity = float((preds[t][m] == cls).mean()) if area and cls is not None else 0.0
                score.append(float(cand.iou[i]) * purity)
        else:  # propagation: every token, predicted IoU x overlap with the previous mask
            idx = list(range(k))
            score = []
            for i in idx:
                m = cand.masks[i]
                union = int((m | previous).sum())
                score.append(float(cand.iou[i]) * (int((m & previous).sum()) / union if union else 0.0))
        if max(score) <= 0.0:
            return cand.default
        return idx[int(np.argmax(score))]

    return choose


def thin_regions(pred: np.ndarray, thin_px: int) -> np.ndarray:
    """bool ``[H, W]``: pixels of ISS regions at most ``thin_px`` pixels thick (what a
    morphological opening of each class's mask with a ``(thin_px+1)`` square removes)."""
    import cv2

    out = np.zeros(pred.shape, bool)
    if thin_px <= 0:
        return out
    kernel = np.ones((thin_px + 1, thin_px + 1), np.uint8)
    for c in np.unique(pred):
        m = (pred == c).astype(np.uint8)
        out |= (m > 0) & (cv2.morphologyEx(m, cv2.MORPH_OPEN, kernel) == 0)
    return out


def object_purity(merged: List[Dict[int, np.ndarray]], preds: Sequence[np.ndarray],
                  obj_class: Dict[int, int]) -> Tuple[Dict[int, float], List[Dict[int, float]]]:
    """Share of each object's pixels the ISS labels with the object's class: over all
    frames, and per frame (``(overall {obj: share}, [per frame {obj: share}])``)."""
    hit: Dict[int, int] = {}
    tot: Dict[int, int] = {}
    per_frame: List[Dict[int, float]] = []
    for t, objs in enumerate(merged):
        cur = {}
        for o, m in objs.items():
            if o not in obj_class:
                continue
            n = int(m.sum())
            if not n:
                continue
            h = int((preds[t][m] == obj_class[o]).sum())
            hit[o] = hit.get(o, 0) + h
            tot[o] = tot.get(o, 0) + n
            cur[o] = h / n
        per_frame.append(cur)
    return {o: hit[o] / tot[o] for o in tot}, per_frame


def gated_labels(maps: List[np.ndarray], obj_class: Dict[int, int], preds: Sequence[np.ndarray],
                 rels: Sequence[np.ndarray], cfg: TargetConfig) -> List[np.ndarray]:
    """Eq. 5 labels with the ``rel_gate`` and ``thin_px`` options applied (int64 ``[H, W]`` each)."""
    tmp = Targets(maps, obj_class)
    out = []
    for t in range(len(maps)):
        label = tmp.eq5(t, preds[t])
        keep_iss = np.zeros(label.shape, bool)
        if cfg.rel_gate > 0:
            keep_iss |= rels[t] >= cfg.rel_gate
        if cfg.thin_px > 0:
            keep_iss |= thin_regions(preds[t], cfg.thin_px)
        out.append(np.where(keep_iss, preds[t].astype(np.int64), label))
    return out


def target_report(labels: Sequence[np.ndarray], preds: Sequence[np.ndarray], num_classes: int,
                  kept: int, dropped: Dict[str, int], teacher_seconds: float) -> Dict[str, object]:
    """The label-free target report: ``changed`` (share of warm-up pixels whose target
    differs from the ISS), ``changed_per_class`` ({ISS class id: share of its pixels
    changed}, classes the ISS predicts), ``objects_kept``, ``objects_dropped``
    ({reason: count}), ``teacher_seconds``."""
    changed = total = 0
    per_n = np.zeros(num_classes, np.int64)
    per_c = np.zeros(num_classes, np.int64)
    for lab, pred in zip(labels, preds):
        diff = lab != pred
        changed += int(diff.sum())
        total += diff.size
        per_n += np.bincount(pred.reshape(-1), minlength=num_classes)[:num_classes]
        per_c += np.bincount(pred[diff], minlength=num_classes)[:num_classes]
    return {"changed": changed / max(total, 1),
            "changed_per_class": {int(c): float(per_c[c] / per_n[c]) for c in np.nonzero(per_n)[0]},
            "objects_kept": int(kept), "objects_dropped": dict(dropped), "teacher_seconds": round(teacher_seconds, 3)}


def build_targets(prop: Propagator, frames: Sequence[np.ndarray], preds: Sequence[np.ndarray],
                  rels: Sequence[np.ndarray], num_classes: int, cfg: TargetConfig = TargetConfig(),
                  progress=None) -> Targets:
    """Run the whole target construction on a warm-up clip.

    Args:
        prop: a propagator backend (its :attr:`~Propagator.chooser` is set from ``cfg.candidate``).
        frames: ``T`` uint8 RGB ``[H, W, 3]`` frames.
        preds: ``T`` int ``[H, W]`` frozen ISS predictions; rels: ``T`` float ``[H, W]`` reliabilities (Eq. 2).
        num_classes: classes of the ISS model.
        cfg: :class:`TargetConfig`.
        progress: optional tqdm-like object, updated once per frame and pass.

    Returns:
        :class:`Targets` with the gated ``labels`` and the ``report`` (no objects when
        nothing was prompted).
    """
    t0 = time.perf_counter()
    n = len(frames)
    shape = preds[0].shape
    prop.init(frames)
    prompted_class: Dict[int, int] = {}
    prop.chooser = make_chooser(cfg.candidate, preds, prompted_class)
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
            prompted_class[next_id] = int(cls)
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
        labels = [p.astype(np.int64) for p in preds]
        secs = time.perf_counter() - t0
        return Targets([np.zeros(shape, np.int32) for _ in range(n)], {}, stats={
            "objects": 0, "covered_fraction": 0.0, "teacher_seconds": secs}, labels=labels,
            report=target_report(labels, preds, num_classes, 0, {}, secs))

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
    obj_class = {o: max(s, key=s.get) for o, s in scores.items() if s and max(s.values()) > 0}
    dropped = {"no_class": int(next_id - 1 - len(obj_class))}
    if cfg.purity_gate > 0 or cfg.drift_cut > 0:
        overall, per_frame = object_purity(merged, preds, obj_class)
        if cfg.purity_gate > 0:
            impure = [o for o in obj_class if overall.get(o, 0.0) < cfg.purity_gate]
            dropped["impure"] = len(impure)
            for o in impure:
                del obj_class[o]
        if cfg.drift_cut > 0:
            cut = 0
            for t, objs in enumerate(merged):
                for o in [o for o in objs if o in obj_class and per_frame[t].get(o, 1.0) < cfg.drift_cut]:
                    del objs[o]
                    cut += 1
            dropped["drifted_frames"] = cut
        merged = [{o: m for o, m in objs.items() if o in obj_class} for objs in merged]
    maps = render(merged, scores, shape)
    labels = gated_labels(maps, obj_class, preds, rels, cfg)
    covered = float(np.mean([(m > 0).mean() for m in maps]))
    secs = time.perf_counter() - t0
    return Targets(maps, obj_class, scores, selected, stats={
        "objects": int(next_id - 1), "objects_with_class": len(obj_class), "covered_fraction": covered,
        "teacher_seconds": secs}, labels=labels,
        report=target_report(labels, preds, num_classes, len(obj_class), dropped, secs))
