"""What every backend of the exported ONNX shares (:mod:`.ort`, :mod:`.openvino`): the
metadata beside the graph, the zero state, the frame check and the per-frame feed."""

from __future__ import annotations

import json
import os
from typing import Dict, Tuple

import numpy as np


class ExportedGraph:
    """Base of the backends that run ``ditta_*.onnx`` (see :mod:`ditta_ros.export`).

    Subclasses set up their runtime and implement :meth:`_run`; ``step`` validates the
    frame, feeds the state (numpy arrays) and carries the next one.

    Raises:
        FileNotFoundError: the ONNX or its metadata JSON is missing.
    """

    def __init__(self, onnx_path: str):
        meta_path = os.path.splitext(onnx_path)[0] + ".json"
        for p in (onnx_path, meta_path):
            if not os.path.isfile(p):
                raise FileNotFoundError(f"exported model file missing: {p}")
        with open(meta_path) as f:
            self.meta = json.load(f)
        self.frame_hw = tuple(self.meta["frame_hw"])
        self._state_names = [k for k in self.meta["inputs"] if k != "image"]
        self._ones = np.ones(self.frame_hw, np.float32)

    def _model_name(self) -> str:
        return os.path.basename(self.meta.get("model", ""))

    def initial_state(self):
        """Zero state ``(feat_prev, logits_prev, has_prev = 0)`` with the metadata's shapes."""
        return tuple(np.zeros(s, dtype=d) for k, (d, s) in self.meta["inputs"].items() if k != "image")

    def _run(self, feed: Dict[str, np.ndarray]) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(labels, confidence, feat, logits)`` for one feed (the graph's inputs it has)."""
        raise NotImplementedError

    def check_frame(self, frame: np.ndarray) -> None:
        """Raise ``ValueError`` for a frame that is not uint8 ``[H, W, 3]`` of the export's size."""
        if frame.dtype != np.uint8 or frame.shape != (*self.frame_hw, 3):
            raise ValueError(f"expected a uint8 frame of {self.frame_hw[0]}x{self.frame_hw[1]}x3, "
                             f"got {frame.shape} {frame.dtype}")

    def state_feed(self, state) -> Dict[str, np.ndarray]:
        """The graph's state inputs by name from ``state`` (``None``: :meth:`initial_state`), float32."""
        state = state if state is not None else self.initial_state()
        return {k: np.asarray(v, np.float32) for k, v in zip(self._state_names, state)}

    def step(self, frame: np.ndarray, state=None):
        """``(labels int64 [H,W], confidence float32 [H,W], state)``; raises ``ValueError``
        for a frame of the wrong size or dtype."""
        self.check_frame(frame)
        labels, conf, feat, logits = self._run({"image": np.ascontiguousarray(frame), **self.state_feed(state)})
        return labels, conf, (feat, logits, self._ones)
