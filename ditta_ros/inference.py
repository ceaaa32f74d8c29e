"""Frame-level inference shared by every front door (CLI, benchmarks, node).

:class:`ISSRunner` turns one RGB frame into the ISS model's outputs: it applies
the model's own preprocessing, runs ``forward`` without gradients, and maps the
logits back to the frame (two-step bilinear resize, official DiTTA behaviour),
softmax, argmax and the Eq. 2 reliability map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np
import torch

from .addon import reliability
from .iss.base import ISSModel, logits_to_frame


@dataclass
class Prediction:
    """One frame's output.

    Attributes:
        labels: ``[H, W]`` uint8 class ids of the model's label set (int16 when it
            has more than 255 classes).
        confidence: ``[H, W]`` float32 reliability ``R`` in [0, 1] (Eq. 2).
    """

    labels: np.ndarray
    confidence: np.ndarray


def resolve_device(device: str) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``; raises ``RuntimeError`` when
    CUDA is asked for but unavailable."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but this torch build sees no CUDA device")
    return dev


def label_dtype(num_classes: int):
    """dtype of a label image: uint8 up to 255 classes (255 stays free for ignore), else int16."""
    return np.uint8 if num_classes <= 255 else np.int16


def labels_from_prob(prob: torch.Tensor) -> np.ndarray:
    """argmax over classes of ``[1, C, H, W]`` -> ``[H, W]`` uint8 (int16 if C > 255)."""
    return prob[0].argmax(0).cpu().numpy().astype(label_dtype(prob.shape[1]))


class ISSRunner:
    """Runs an :class:`ISSModel` on uint8 RGB frames.

    Args:
        model: the ISS model (moved to ``device``, put in eval mode).
        device: torch device string.
        channels_last: use the channels-last memory layout on the CPU (default
            on: ~1.4x faster for ESPNetv2's grouped/depth-wise convolutions with
            oneDNN, measured in ``bench/iss_speed.py``).
    """

    def __init__(self, model: ISSModel, device: str = "cpu", channels_last: bool = True):
        self.device = resolve_device(device)
        self.channels_last = bool(channels_last) and self.device.type == "cpu"
        self.model = model.to(self.device).eval()
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def prepare(self, frame: np.ndarray) -> torch.Tensor:
        """Preprocessed input ``[1, 3, h, w]`` on the runner's device."""
        x = self.model.preprocess(frame).to(self.device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @torch.inference_mode()
    def forward(self, frame: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor, Tuple[int, int]]:
        """``(features [1,D,h,w], logits [1,C,h,w], input_hw)`` for one frame."""
        x = self.prepare(frame)
        features, logits = self.model(x)
        return features, logits, tuple(x.shape[2:])

    def frame_prob(self, logits: torch.Tensor, input_hw, frame_hw) -> torch.Tensor:
        """Softmax probabilities ``[1, C, H, W]`` at the frame resolution."""
        with torch.inference_mode():
            return torch.softmax(logits_to_frame(self.model, logits.contiguous(), input_hw, frame_hw), dim=1)

    def predict(self, frame: np.ndarray) -> Prediction:
        """Frame-wise ISS prediction (labels and reliability) at the frame's size."""
        _, logits, input_hw = self.forward(frame)
        prob = self.frame_prob(logits, input_hw, frame.shape[:2])
        with torch.inference_mode():
            rel = reliability(prob)[0]
        return Prediction(labels_from_prob(prob), rel.float().cpu().numpy())
