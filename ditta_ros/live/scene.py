"""Automatic re-adaptation: a sustained shift of the predicted class histogram
(``auto_readapt``, off by default)."""

from __future__ import annotations

from typing import Optional

import numpy as np


class SceneChangeDetector:
    """Sustained shift of the predicted class histogram (for automatic re-adaptation).

    The reference is the mean class histogram of the first ``frames`` streamed
    frames after an adaptation; afterwards an exponential moving average
    (``alpha = 2 / (frames + 1)``) of the per-frame histograms is compared to it by
    total-variation distance (0..1). A change is reported when that distance stays
    above ``threshold`` for ``frames`` consecutive frames.
    """

    def __init__(self, num_classes: int, threshold: float = 0.35, frames: int = 30):
        self.num_classes, self.threshold, self.frames = int(num_classes), float(threshold), max(1, int(frames))
        self.reset()

    def reset(self) -> None:
        self._ref_sum = np.zeros(self.num_classes)
        self._ref_n = 0
        self._ema: Optional[np.ndarray] = None
        self._over = 0
        self.distance = 0.0

    def update(self, labels: np.ndarray) -> bool:
        """Feed one label image ``[H, W]``; True once when a sustained change is seen."""
        hist = np.bincount(labels.ravel().astype(np.int64), minlength=self.num_classes)[:self.num_classes]
        hist = hist / max(1, hist.sum())
        if self._ref_n < self.frames:
            self._ref_sum += hist
            self._ref_n += 1
            return False
        alpha = 2.0 / (self.frames + 1)
        self._ema = hist if self._ema is None else (1 - alpha) * self._ema + alpha * hist
        self.distance = 0.5 * float(np.abs(self._ema - self._ref_sum / self._ref_n).sum())
        self._over = self._over + 1 if self.distance > self.threshold else 0
        if self._over >= self.frames:
            distance = self.distance
            self.reset()
            self.distance = distance  # kept for the caller's log line
            return True
        return False
