"""Zero-shot propagator refinement (paper Sec. 5.3): no adaptation; the teacher
propagates the ISS segments of the first evaluated frame over the whole evaluation
stream and overrides the ISS prediction where its masks are.

On the first evaluated frame: per class, the 8-connected components of the ISS
prediction; components under 0.05% of the image are dropped; each keeps its
class and its confidence (the maximum ISS reliability inside). They are
propagated over every evaluated frame; per frame the propagated masks are
painted over the ISS prediction, least confident first. The teacher runs on
every frame, so its time counts in the method's fps.
"""

from __future__ import annotations

import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..inference import ISSRunner, Prediction
from ..protocol import Method
from ..teacher.propagator import Propagator

MIN_AREA = 0.0005


def components(pred: np.ndarray, rel: np.ndarray, min_area: float = MIN_AREA):
    """``[(mask, class, confidence)]``: 8-connected components per class above
    ``min_area`` (fraction of the image)."""
    import cv2

    out = []
    limit = min_area * pred.size
    for c in np.unique(pred):
        n, lab = cv2.connectedComponents((pred == c).astype(np.uint8), connectivity=8)
        for k in range(1, n):
            m = lab == k
            if m.sum() >= limit:
                out.append((m, int(c), float(rel[m].max())))
    return out


class ZeroShotRefine(Method):
    """Zero-shot refinement with a propagator (see module docstring)."""

    name = "zs-refine"

    def __init__(self, runner: ISSRunner, teacher):
        self.runner = runner
        self.teacher = teacher
        self._masks: List[Dict[int, np.ndarray]] = []
        self._cls: Dict[int, int] = {}
        self._conf: Dict[int, float] = {}
        self._i = 0
        self.stream_setup_seconds = 0.0

    def start_stream(self, eval_frames: Optional[Sequence[np.ndarray]] = None) -> None:
        if eval_frames is None:
            raise ValueError("zs-refine needs the evaluation frames up front (offline method)")
        t0 = time.perf_counter()
        frames = list(eval_frames)
        first = self.runner.predict(frames[0])
        comps = components(first.labels.astype(np.int64), first.confidence)
        prop: Propagator = self.teacher()
        prop.init(frames)
        self._cls, self._conf = {}, {}
        for oid, (m, c, conf) in enumerate(comps, 1):
            prop.add_mask(0, oid, m)
            self._cls[oid], self._conf[oid] = c, conf
        self._masks = [prop.masks(0)]
        for t in range(len(frames) - 1):
            self._masks.append(prop.step(t))
        self._i = 0
        self.stream_setup_seconds = time.perf_counter() - t0

    def predict(self, frame: np.ndarray) -> Prediction:
        out = self.runner.predict(frame)
        labels = out.labels.copy()
        masks = self._masks[self._i] if self._i < len(self._masks) else {}
        for oid in sorted(masks, key=lambda o: self._conf[o]):
            labels[masks[oid]] = self._cls[oid]
        self._i += 1
        return Prediction(labels, out.confidence)
