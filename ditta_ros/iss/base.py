"""The one interface every ISS (image semantic segmentation) model family implements.

An :class:`ISSModel` is a ``torch.nn.Module`` with

* ``encode(images)`` / ``decode(encoded)`` / ``classify(features)``: the frozen
  backbone, the decoder up to its last feature map, and the classifier;
  ``forward`` is their composition (the split lets adaptation compute the frozen
  backbone once per warm-up frame);
* ``forward(images) -> (features, logits)``: ``images`` float32 ``[B, 3, H, W]``,
  already normalised by the model's own :class:`Preprocess`; ``features``
  ``[B, D, h, w]`` is the decoder's last feature map before the classifier (what
  the temporal add-on and the contrastive prototypes use), ``logits`` ``[B, C, h, w]``
  the raw class scores on the same grid;
* ``upsample_logits(logits, input_hw)``: the family's own resize from the
  feature grid to the network input size (upstream behaviour: ESPNetv2 uses
  ``align_corners=True``, SegFormer/mmseg ``align_corners=False``);
* ``param_groups()``: named parameter groups; ``"decoder"`` is what test-time
  adaptation updates, ``"cls_head"`` the final classifier alone.

The two-step resize back to the source frame (network input size, then frame
size, bilinear, ``align_corners=False``) matches the official DiTTA code
(``ditta/segformer.py``: ``encode_decode`` + ``whole_inference``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """How a family turns an RGB uint8 frame into its input tensor.

    Attributes:
        mode: ``"fixed"`` resizes every frame to ``size`` (width, height), as the
            ESPNetv2 reference and the Hugging Face SegFormer image processor do;
            ``"keep_ratio"`` rescales so the frame fits ``size`` = (long, short)
            edge limits keeping its aspect ratio, then aligns both sides up to a
            multiple of ``size_divisor`` (mmseg ``AlignedResize``, the official
            DiTTA/VSPW pipeline).
        size: ``(width, height)`` for ``fixed``; ``(long_edge, short_edge)`` for
            ``keep_ratio``. Pixels.
        mean, std: per-channel statistics in the 0..1 range, RGB order.
        resize: ``"pil"`` (PIL bilinear; ESPNetv2 reference) or ``"cv2"``
            (OpenCV ``INTER_LINEAR``; mmseg).
        size_divisor: alignment for ``keep_ratio``.
    """

    mode: str = "fixed"
    size: Tuple[int, int] = (512, 512)
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD
    resize: str = "pil"
    size_divisor: int = 1

    def input_hw(self, frame_hw: Tuple[int, int]) -> Tuple[int, int]:
        """Network input ``(height, width)`` for a frame of ``frame_hw`` pixels."""
        h, w = frame_hw
        if self.mode == "fixed":
            return int(self.size[1]), int(self.size[0])
        if self.mode != "keep_ratio":
            raise ValueError(f"unknown preprocess mode {self.mode!r} (fixed | keep_ratio)")
        long_e, short_e = max(self.size), min(self.size)
        scale = min(long_e / max(h, w), short_e / min(h, w))
        nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
        d = max(int(self.size_divisor), 1)
        return int(math.ceil(nh / d)) * d, int(math.ceil(nw / d)) * d

    def __call__(self, frame: np.ndarray) -> torch.Tensor:
        """Normalised input tensor for one frame.

        Args:
            frame: ``[H, W, 3]`` uint8 RGB.

        Returns:
            float32 ``[1, 3, h, w]`` with ``(h, w) = input_hw(frame.shape[:2])``.

        Raises:
            ValueError: wrong shape or dtype.
        """
        if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 RGB frame, got shape {getattr(frame, 'shape', None)}")
        if frame.dtype != np.uint8:
            raise ValueError(f"expected a uint8 frame, got {frame.dtype}")
        h, w = self.input_hw(frame.shape[:2])
        if (h, w) != frame.shape[:2]:
            frame = resize_rgb(frame, (h, w), self.resize)
        x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).float().div_(255.0)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return x.sub_(mean).div_(std).unsqueeze(0)


def resize_rgb(frame: np.ndarray, hw: Tuple[int, int], method: str) -> np.ndarray:
    """Bilinear resize of a uint8 ``[H, W, 3]`` image to ``hw`` = (height, width).

    ``method="pil"`` reproduces PIL's ``Image.resize(..., BILINEAR)`` (anti-aliased
    when shrinking), ``"cv2"`` OpenCV's ``INTER_LINEAR``.
    """
    h, w = hw
    if method == "pil":
        from PIL import Image

        return np.array(Image.fromarray(frame).resize((w, h), Image.BILINEAR))
    if method == "cv2":
        import cv2

        return cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR)
    raise ValueError(f"unknown resize method {method!r} (pil | cv2)")


class ISSModel(nn.Module):
    """Base class of the ISS families; see the module docstring for the contract.

    Subclasses set ``family``, ``num_classes``, ``feature_dim``, ``preprocess``
    and ``upsample_align_corners`` and implement ``forward`` and ``param_groups``.
    """

    family: str = "iss"
    num_classes: int
    feature_dim: int
    preprocess: Preprocess
    upsample_align_corners: bool = False
    #: pooling factor of the add-on grid relative to the decoder grid (see TemporalAddon)
    addon_grid_stride: int = 1

    def encode(self, images: torch.Tensor):  # pragma: no cover
        """Backbone (frozen during adaptation) outputs, family-specific tuple."""
        raise NotImplementedError

    def decode(self, encoded) -> torch.Tensor:  # pragma: no cover
        """Decoder features ``[B, D, h, w]`` from :meth:`encode`'s output."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(features [B, D, h, w], logits [B, C, h, w])`` = ``decode(encode(x))`` and
        ``classify`` of it."""
        features = self.decode(self.encode(images))
        return features, self.classify(features)

    def classify(self, features: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """Logits ``[B, C, h, w]`` from decoder features ``[B, D, h, w]``."""
        raise NotImplementedError

    def param_groups(self) -> Dict[str, List[nn.Parameter]]:  # pragma: no cover
        raise NotImplementedError

    def upsample_logits(self, logits: torch.Tensor, input_hw: Sequence[int]) -> torch.Tensor:
        """Resize ``[B, C, h, w]`` logits to the network input size, bilinear with the
        family's upstream ``align_corners``."""
        if tuple(logits.shape[-2:]) == tuple(input_hw):
            return logits
        return F.interpolate(logits, size=tuple(input_hw), mode="bilinear",
                             align_corners=self.upsample_align_corners)


def logits_to_frame(model: ISSModel, logits: torch.Tensor, input_hw: Sequence[int],
                    frame_hw: Sequence[int]) -> torch.Tensor:
    """Two-step resize of logits back to the source frame (official DiTTA behaviour).

    Args:
        logits: ``[B, C, h, w]`` float on the model's feature grid.
        input_hw: network input ``(H_in, W_in)``.
        frame_hw: source frame ``(H, W)``.

    Returns:
        ``[B, C, H, W]`` float logits: first the family's own upsampling to the
        input size, then bilinear ``align_corners=False`` to the frame size.
    """
    out = model.upsample_logits(logits, input_hw)
    if tuple(out.shape[-2:]) != tuple(frame_hw):
        out = F.interpolate(out, size=tuple(frame_hw), mode="bilinear", align_corners=False)
    return out


def plain_step(model: ISSModel, images: torch.Tensor, frame_hw: Sequence[int], encoded=None):
    """The plain ISS step, the one place it is written: backbone, decoder, classifier and the
    two-step resize of the logits to the frame (every front door goes through it: the
    frame-wise runner, the warm-up of DiTTA, the streaming model and its export).

    Args:
        images: normalised network input ``[B, 3, h_in, w_in]`` (the model's preprocessing).
        frame_hw: source frame ``(H, W)`` in pixels.
        encoded: the backbone's outputs for ``images`` when already computed (``None``: run it).

    Returns:
        ``(encoded, features [B, D, h, w], logits [B, C, h, w], frame_logits [B, C, H, W])``,
        float, on the model's device; gradients flow unless the caller disables them.
    """
    encoded = model.encode(images) if encoded is None else encoded
    features = model.decode(encoded)
    logits = model.classify(features)
    return encoded, features, logits, logits_to_frame(model, logits, images.shape[2:], frame_hw)


@dataclass
class ModelInfo:
    """Descriptive metadata a loader attaches to a model (``model.info``)."""

    name: str
    family: str
    label_set: str
    weights: str = ""
    extra: Dict[str, object] = field(default_factory=dict)
