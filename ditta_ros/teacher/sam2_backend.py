"""The official ``sam2`` package's video predictor as a propagator backend.

* SAM2 and SAM2.1 configs (``sam2_hiera_t.yaml`` ... ``sam2.1/sam2.1_hiera_l.yaml``),
  checkpoint given by the user (``None`` = random weights, for tests);
  ``image_size`` overridable (``++model.image_size``).
* Image features of every warm-up frame are kept (:class:`CachingVideoPredictor`;
  upstream keeps only the most recent frame), as the official DiTTA subclass does,
  because the target builder revisits frames many times.
* The state is built from frames in memory through a temporary JPEG folder (what
  ``init_state`` reads).
* SAM2 cannot add objects once tracking started: when a frame brings new
  prompts after that, the state is reset and the objects tracked so far are
  re-added on that frame as mask prompts (official ``sam2_target.py`` behaviour).
* bf16 autocast only on CUDA (on CPU it is ~10x slower).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Dict, Optional, Sequence

import numpy as np

from .propagator import Propagator

try:  # the subclass needs sam2; the module stays importable without it
    from sam2.sam2_video_predictor import SAM2VideoPredictor as _Base
except ImportError:  # pragma: no cover - reported by Sam2Propagator
    _Base = object


class CachingVideoPredictor(_Base):
    """SAM2 video predictor whose image-feature cache keeps every frame of the state."""

    def _get_image_feature(self, inference_state, frame_idx, batch_size):
        cache = inference_state.setdefault("ditta_feature_cache", {})
        if frame_idx in cache:
            inference_state["cached_features"] = {frame_idx: cache[frame_idx]}
        out = super()._get_image_feature(inference_state, frame_idx, batch_size)
        cache[frame_idx] = inference_state["cached_features"][frame_idx]
        return out


class Sam2Propagator(Propagator):
    """Propagator over ``sam2.sam2_video_predictor``.

    Args:
        config: sam2 config name, e.g. ``"sam2.1/sam2.1_hiera_t.yaml"`` or ``"sam2_hiera_l.yaml"``.
        checkpoint: ``.pt`` path or ``None`` (random weights).
        device: ``"cpu"`` or ``"cuda"``.
        image_size: SAM2 input size override (1024 upstream; 512 or 256 are much
            cheaper on CPU).

    Raises:
        ImportError: the ``sam2`` package is missing (with the install command).
        FileNotFoundError: ``checkpoint`` does not exist.
    """

    name = "sam2"

    def __init__(self, config: str = "sam2.1/sam2.1_hiera_t.yaml", checkpoint: Optional[str] = None,
                 device: str = "cpu", image_size: Optional[int] = None):
        try:
            from sam2.build_sam import build_sam2_video_predictor
        except ImportError as err:
            raise ImportError("the sam2 backend needs the sam2 package: "
                              "SAM2_BUILD_CUDA=0 pip install --no-deps --no-build-isolation sam2==1.1.0") from err
        if checkpoint is not None and not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"SAM2 checkpoint not found: {checkpoint}")
        if not config.startswith("configs/"):
            config = "configs/" + (config if "/" in config else
                                   ("sam2.1/" + config if config.startswith("sam2.1") else "sam2/" + config))
        overrides = [f"++model._target_={CachingVideoPredictor.__module__}.CachingVideoPredictor"]
        if image_size:
            overrides.append(f"++model.image_size={int(image_size)}")
        self.predictor = build_sam2_video_predictor(config, ckpt_path=checkpoint, device=device,
                                                    hydra_overrides_extra=overrides)
        self.device = device
        self.state = None
        self._tmp: Optional[str] = None
        self._tracked: Dict[int, Dict[int, np.ndarray]] = {}
        self._started = False
        self._reset_frame: Optional[int] = None

    def _autocast(self):
        import torch

        if str(self.device).startswith("cuda"):
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def init(self, frames: Sequence[np.ndarray]) -> None:
        import cv2

        self.close()
        self._tmp = tempfile.mkdtemp(prefix="ditta_sam2_")
        for i, f in enumerate(frames):
            cv2.imwrite(os.path.join(self._tmp, f"{i:05d}.jpg"), f[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        with self._autocast():
            self.state = self.predictor.init_state(self._tmp, offload_video_to_cpu=self.device == "cpu")
        self.reset()

    def close(self) -> None:
        if self._tmp and os.path.isdir(self._tmp):
            shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp = None

    def __del__(self):  # pragma: no cover - best effort
        if getattr(self, "_tmp", None):
            self.close()

    def reset(self) -> None:
        if self.state is not None:
            self.predictor.reset_state(self.state)
        self._tracked = {}
        self._started = False
        self._reset_frame = None

    def _record(self, frame_idx, obj_ids, masks) -> Dict[int, np.ndarray]:
        out = {int(o): (masks[i, 0] > 0.0).cpu().numpy() for i, o in enumerate(obj_ids)}
        self._tracked[frame_idx] = out
        return out

    def _before_prompt(self, frame_idx: int) -> None:
        """Once tracking started, the first new prompt on a frame resets the state and
        re-adds the objects tracked so far (as masks on that frame)."""
        if self._started and self._reset_frame != frame_idx:
            keep = dict(self._tracked.get(frame_idx, {}))
            self.predictor.reset_state(self.state)
            self._started = False
            self._reset_frame = frame_idx
            self._tracked = {}
            for obj_id, mask in keep.items():
                self._add_mask(frame_idx, obj_id, mask)

    def add_points(self, frame_idx, obj_id, points, labels):
        import torch

        self._before_prompt(frame_idx)
        with torch.inference_mode(), self._autocast():
            _, obj_ids, masks = self.predictor.add_new_points_or_box(
                self.state, frame_idx, int(obj_id), points=np.asarray(points, np.float32),
                labels=np.asarray(labels, np.int32))
        return self._record(frame_idx, obj_ids, masks)[int(obj_id)]

    def _add_mask(self, frame_idx, obj_id, mask):
        import torch

        with torch.inference_mode(), self._autocast():
            _, obj_ids, masks = self.predictor.add_new_mask(self.state, frame_idx, int(obj_id),
                                                            torch.as_tensor(np.asarray(mask, bool)))
        self._record(frame_idx, obj_ids, masks)

    def add_mask(self, frame_idx, obj_id, mask):
        self._before_prompt(frame_idx)
        self._add_mask(frame_idx, obj_id, mask)

    def masks(self, frame_idx):
        return dict(self._tracked.get(frame_idx, {}))

    def step(self, frame_idx, reverse=False):
        import torch

        if not self._tracked.get(frame_idx):
            return {}
        with torch.inference_mode(), self._autocast():
            gen = self.predictor.propagate_in_video(self.state, start_frame_idx=frame_idx,
                                                    max_frame_num_to_track=1, reverse=reverse)
            next(gen)  # the start frame itself
            nxt, obj_ids, masks = next(gen)
            gen.close()
        self._started = True
        self._reset_frame = None
        return self._record(nxt, obj_ids, masks)
