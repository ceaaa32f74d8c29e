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
from .iss.base import ISSModel, logits_to_frame, plain_step


@dataclass
class Prediction:
    """One frame's output.

    Attributes:
        labels: ``[H, W]`` class ids of the model's label set, :func:`label_dtype`.
        confidence: ``[H, W]`` float32 reliability ``R`` in [0, 1] (Eq. 2).
    """

    labels: np.ndarray
    confidence: np.ndarray

    @classmethod
    def of(cls, labels, confidence, num_classes: int) -> "Prediction":
        """A backend's ``(labels, confidence)`` (numpy or torch, any integer dtype) as a
        Prediction: labels in :func:`label_dtype`, confidence float32."""
        if isinstance(labels, torch.Tensor):
            labels, confidence = labels.cpu().numpy(), confidence.float().cpu().numpy()
        return cls(np.asarray(labels).astype(label_dtype(num_classes)), np.asarray(confidence, dtype=np.float32))


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
    """dtype of a label image, the one place the rule is stated: uint8 up to 255 classes
    (255 stays free for ignore; published as mono8), else uint16 (65535 = ignore; mono16)."""
    return np.uint8 if num_classes <= 255 else np.uint16


def labels_from_prob(prob: torch.Tensor) -> np.ndarray:
    """argmax over classes of ``[1, C, H, W]`` -> ``[H, W]`` :func:`label_dtype` class ids."""
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
        _, features, logits, _ = plain_step(self.model, x, x.shape[2:])
        return features, logits, tuple(x.shape[2:])

    def frame_prob(self, logits: torch.Tensor, input_hw, frame_hw) -> torch.Tensor:
        """Softmax probabilities ``[1, C, H, W]`` at the frame resolution."""
        with torch.inference_mode():
            return torch.softmax(logits_to_frame(self.model, logits.contiguous(), input_hw, frame_hw), dim=1)

    def predict(self, frame: np.ndarray) -> Prediction:
        """Frame-wise ISS prediction (labels and reliability) at the frame's size."""
        with torch.inference_mode():
            x = self.prepare(frame)
            prob = torch.softmax(plain_step(self.model, x, frame.shape[:2])[3], dim=1)
            rel = reliability(prob)[0]
        return Prediction(labels_from_prob(prob), rel.float().cpu().numpy())
