"""torch backend: the streaming model itself (CPU or CUDA)."""

from __future__ import annotations

import numpy as np


class TorchBackend:
    """Wraps a :class:`~ditta_ros.streaming.StreamingDiTTA`; numpy outputs.

    Args:
        model: the streaming model (its device is used).
        fp16: run in half precision (CUDA only; ignored with a CPU model).
        channels_last: channels-last layout on the CPU (default on, faster).
    """

    def __init__(self, model, fp16: bool = False, channels_last: bool = True):
        self.model = model.eval()
        cuda = self.model.mean.device.type == "cuda"
        self.fp16 = bool(fp16) and cuda
        if self.fp16:
            self.model.half()
        if channels_last and not cuda:
            self.model.use_channels_last()
        self.frame_hw = model.frame_hw

    def describe(self) -> str:
        """One line for logs: device and precision."""
        return f"torch {self.model.mean.device}{' fp16' if self.fp16 else ''}"

    def initial_state(self):
        """Zero state of the streaming model (first frame: plain branch only)."""
        return self.model.initial_state()

    def step(self, frame: np.ndarray, state=None):
        """``(labels int64 [H,W], confidence float32 [H,W], state)``; raises ``ValueError``
        for a frame of the wrong size or dtype."""
        labels, conf, state = self.model.step(frame, state)
        return labels.cpu().numpy(), conf.float().cpu().numpy(), state
