"""The propagator interface: a promptable video-mask tracker driven one frame at a time.

The distillation-target builder (:mod:`ditta_ros.teacher.targets`) drives a
propagator exactly like the official code drives SAM2's video predictor::

    prop.init(frames)                       # warm-up clip, uint8 RGB [H, W, 3] each
    prop.reset()                            # forget prompts and tracks (keeps image features)
    prop.add_points(t, obj_id, points, labels)   # new object from clicks on frame t
    prop.add_mask(t, obj_id, mask)               # (re-)add an object from a mask on frame t
    prop.masks(t)                           # {obj_id: bool [H, W]} of the objects on frame t
    prop.step(t, reverse=False)             # propagate every object from frame t to t+1 (t-1)

A backend that, like SAM2, cannot add objects once tracking started handles that
itself (reset, then re-add the tracked objects as masks).

A backend whose decoder returns several candidate masks per prompt (SAM's
multimask tokens) offers them to :attr:`Propagator.chooser` when one is set: the
choice is a rule of the target builder, not of the backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence

import numpy as np


@dataclass
class Candidates:
    """The candidate masks of one prompt.

    Attributes:
        masks: bool ``[K, H, W]`` at frame size.
        iou: float32 ``[K]`` the decoder's predicted IoUs.
        low: float32 ``[K, 256, 256]`` low-resolution logits (what a mask prompt re-uses).
        default: the index the backend itself would return.
    """

    masks: np.ndarray
    iou: np.ndarray
    low: np.ndarray
    default: int


#: ``chooser(frame_idx, obj_id, candidates, previous_mask_or_None) -> index``; ``previous``
#: is the object's mask on the frame it is propagated from (``None`` for a new prompt)
Chooser = Callable[[int, int, Candidates, Optional[np.ndarray]], int]


class Propagator:
    """Base class; see the module docstring for the call sequence."""

    name = "propagator"
    #: candidate rule set by the target builder; ``None`` = the backend's own choice
    chooser: Optional[Chooser] = None

    def init(self, frames: Sequence[np.ndarray]) -> None:  # pragma: no cover
        raise NotImplementedError

    def reset(self) -> None:  # pragma: no cover
        raise NotImplementedError

    def add_points(self, frame_idx: int, obj_id: int, points: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Add object ``obj_id`` on ``frame_idx`` from click ``points`` (float ``[N, 2]``,
        x, y in frame pixels) with ``labels`` (int ``[N]``: 1 positive, 0 negative).
        Returns the object's bool ``[H, W]`` mask on that frame."""
        raise NotImplementedError  # pragma: no cover

    def add_mask(self, frame_idx: int, obj_id: int, mask: np.ndarray) -> None:  # pragma: no cover
        """Add (or replace) object ``obj_id`` on ``frame_idx`` from a bool ``[H, W]`` mask."""
        raise NotImplementedError

    def masks(self, frame_idx: int) -> Dict[int, np.ndarray]:  # pragma: no cover
        """Masks of every tracked object on ``frame_idx`` (bool ``[H, W]``; may be empty)."""
        raise NotImplementedError

    def step(self, frame_idx: int, reverse: bool = False) -> Dict[int, np.ndarray]:  # pragma: no cover
        """Propagate all objects from ``frame_idx`` to the next frame (previous with
        ``reverse``) and return their masks there."""
        raise NotImplementedError
