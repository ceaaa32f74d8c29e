"""The warm-up window of the live pipeline (:class:`WarmupWindow`): which frames are kept for the
adaptation and when the window is full."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from ..inference import Prediction

log = logging.getLogger("ditta.live")


@dataclass
class WarmupBatch:
    """A full warm-up window: ``frames`` (uint8 RGB ``[H, W, 3]``, one size), the ISS predictions
    served for them (``None`` when any was not the ISS's own) and their ``stamps`` (s)."""

    frames: List[np.ndarray]
    preds: Optional[List[Prediction]]
    stamps: List[float]


class WarmupWindow:
    """Every ``frame_stride``-th frame is kept until ``frames`` frames (or ``seconds`` of stream
    time, whichever comes first, with at least two frames) are collected; a change of frame size
    restarts the window. ``progress`` is the filled share (0..1)."""

    def __init__(self, frames: int, seconds: float = 0.0, frame_stride: int = 1):
        self.size, self.seconds, self.stride = int(frames), float(seconds), max(1, int(frame_stride))
        self.clear()

    def clear(self) -> None:
        """Start an empty window."""
        self._frames: List[np.ndarray] = []
        self._preds: List[Optional[Prediction]] = []
        self._stamps: List[float] = []
        self._seen = 0
        self._t0: Optional[float] = None
        self.progress = 0.0

    def add(self, frame: np.ndarray, stamp: float, pred: Optional[Prediction]) -> Optional[WarmupBatch]:
        """Offer one frame (``pred``: the ISS prediction served for it, ``None`` when another model
        served it). Returns the batch once the window is full (and starts an empty one)."""
        if self._t0 is None:
            self._t0 = stamp
        if self._frames and self._frames[0].shape != frame.shape:
            log.warning("frame size changed during warm-up (%s -> %s): restarting the warm-up window",
                        self._frames[0].shape[:2], frame.shape[:2])
            self._frames, self._preds, self._stamps, self._t0 = [], [], [], stamp
        if self._seen % self.stride == 0:
            self._frames.append(frame.copy())
            self._preds.append(pred)
            self._stamps.append(stamp)
        self._seen += 1
        self.progress = min(1.0, len(self._frames) / max(1, self.size))
        timed_out = self.seconds > 0 and stamp - self._t0 >= self.seconds
        if len(self._frames) < self.size and not (timed_out and len(self._frames) >= 2):
            return None
        preds = self._preds if all(p is not None for p in self._preds) else None
        batch = WarmupBatch(self._frames, preds, self._stamps)
        self.clear()
        return batch
