"""The temporal vote of the warm-up's ISS labels (ours, the ``temporal_vote`` target option of
:class:`~ditta_ros.teacher.targets.TargetConfig`; ``docs/dev_set_rule.md`` addendum 10): evidence from
neighbouring warm-up frames, moved by optical flow, before the teacher runs."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np


def temporal_vote(frames: Sequence[np.ndarray], preds: Sequence[np.ndarray], rels: Sequence[np.ndarray],
                  interval: Optional[float], limit: float, scale: float = 0.5,
                  max_fb: float = 1.0) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    """The warm-up's ISS labels and reliabilities voted across neighbouring warm-up frames moved by
    optical flow (ours, the ``temporal_vote`` target option; ``docs/dev_set_rule.md`` addendum 10).

    Frame ``t``'s voters are itself and every warm-up frame ``k`` with ``|t - k| x interval <= limit``
    (within :data:`~ditta_ros.gates.STAMP_SLACK`; the warm-up frames taken as evenly spaced, a node's at
    their median gap; ``limit`` 0: every warm-up frame, ``T (T - 1)`` optical flows; ``interval`` ``None``
    or <= 0: none but itself). A neighbour votes at pixel ``x`` with its label and reliability at
    ``x + flow(x)`` (nearest pixel), the DIS flow (:func:`~ditta_ros.gates.dis_flow`) from frame ``t`` to
    ``k`` on frames scaled by ``scale``, where that flow is forward-backward consistent within ``max_fb``
    scaled pixels and lands inside the frame.
    Each voter adds its reliability to its label's score; the highest score wins (ties: the frame's own
    label) and the new reliability is the winning score over the number of voters.

    Args:
        frames: ``T`` uint8 RGB ``[H, W, 3]`` warm-up frames in time order; preds: ``T`` int ``[H, W]``
            ISS labels; rels: ``T`` float ``[H, W]`` Eq. 2 reliabilities in [0, 1].
        interval: seconds between consecutive warm-up frames; limit: seconds (the fusion limit,
            :meth:`~ditta_ros.presets.DittaConfig.fusion_limit`).

    Returns:
        ``(preds, rels)``: int64 and float32 ``[H, W]`` per frame; the inputs' values where no
        neighbour votes.

    Raises:
        ValueError: ``frames``, ``preds`` and ``rels`` differ in length or frame size.
    """
    import cv2

    from ..gates import STAMP_SLACK, _pixel_grid, dis_flow, fb_consistent, small_grey

    n = len(frames)
    if len(preds) != n or len(rels) != n or any(p.shape != f.shape[:2] or r.shape != f.shape[:2]
                                                for f, p, r in zip(frames, preds, rels)):
        raise ValueError("temporal_vote: frames, preds and rels must match one to one, at frame size")
    preds = [np.asarray(p, np.int64) for p in preds]
    rels = [np.asarray(r, np.float32) for r in rels]
    if not interval or interval <= 0 or n < 2:
        return preds, rels
    reach = n - 1 if limit <= 0 else min(n - 1, int((limit + STAMP_SLACK) / interval))
    if reach < 1:
        return preds, rels
    dis = dis_flow()
    greys = [small_grey(f, scale) for f in frames]
    flows = {}  # (a, b) -> DIS flow from frame a to frame b: each ordered pair computed once

    def flow(a: int, b: int) -> np.ndarray:
        if (a, b) not in flows:
            flows[(a, b)] = dis.calc(greys[a], greys[b], None)
        return flows[(a, b)]

    out_p, out_r = [], []
    for t in range(n):
        h, w = preds[t].shape
        labels, weights = [preds[t]], [rels[t]]
        voters = np.ones((h, w), np.float32)
        for k in range(max(0, t - reach), min(n, t + reach + 1)):
            if k == t or greys[k].shape != greys[t].shape:
                continue
            fw = flow(t, k)
            ok = fb_consistent(fw, flow(k, t), max_fb)
            sh, sw = ok.shape
            full = cv2.resize(fw, (w, h), interpolation=cv2.INTER_LINEAR)
            gx, gy = _pixel_grid(h, w)
            mx, my = gx + full[..., 0] * (w / sw), gy + full[..., 1] * (h / sh)
            inside = (mx >= 0) & (mx <= w - 1) & (my >= 0) & (my <= h - 1)
            valid = inside & (cv2.resize(ok, (w, h), interpolation=cv2.INTER_NEAREST) > 0)
            lab = cv2.remap(preds[k].astype(np.float32), mx, my, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)
            rel = cv2.remap(rels[k], mx, my, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)
            labels.append(np.rint(lab).astype(np.int64))
            weights.append(np.where(valid, rel, 0.0).astype(np.float32))
            voters += valid
        if len(labels) == 1:
            out_p.append(preds[t])
            out_r.append(rels[t])
            continue
        scores = [sum(np.where(labels[i] == labels[j], weights[i], 0.0) for i in range(len(labels)))
                  for j in range(len(labels))]
        best = np.zeros((h, w), np.int64)
        top = scores[0]
        for j in range(1, len(labels)):  # strictly higher only: ties keep the earlier voter, the frame first
            better = (scores[j] > top) & (weights[j] > 0)
            best[better] = j
            top = np.where(better, scores[j], top)
        out_p.append(np.take_along_axis(np.stack(labels), best[None], 0)[0])
        out_r.append((top / voters).astype(np.float32))
    return out_p, out_r
