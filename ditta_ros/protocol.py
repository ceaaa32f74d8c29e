"""Evaluation protocols over a clip and the interface every method implements.

* **W2F** (warm-up then freeze, the paper's main protocol): the first
  ``max(n * ratio // 100, 1)`` frames are the warm-up (adaptation may look at
  them), the model is then frozen and evaluated on the remaining frames. This is
  the official ``ditta/data.py`` ``warmup_length``. Every method, the frame-wise
  ISS baseline included, is scored on the same evaluation frames.
* **full-video** (``ratio = 100``): the warm-up is the whole clip and the
  evaluation runs on every frame again after adaptation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import numpy as np

from .inference import Prediction

#: W2F warm-up percentage of ``ditta eval``, ``ditta suite`` and ``ditta compare`` (the paper's)
DEFAULT_WARMUP_RATIO = 10


def warmup_length(num_frames: int, ratio: int) -> int:
    """Warm-up frames under W2F: ``max(num_frames * ratio // 100, 1)`` (integer percent).

    Raises:
        ValueError: ``num_frames < 1`` or ``ratio`` outside 1..100.
    """
    if num_frames < 1:
        raise ValueError("a clip needs at least one frame")
    if not 1 <= int(ratio) <= 100:
        raise ValueError(f"warm-up ratio is a percentage in 1..100, got {ratio}")
    return max(num_frames * int(ratio) // 100, 1)


@dataclass(frozen=True)
class Split:
    """Frame indices of the warm-up and of the evaluation."""

    warmup: range
    evaluate: range


def w2f_split(num_frames: int, ratio: int) -> Split:
    """W2F split; ``ratio = 100`` is the full-video protocol (evaluate every frame).

    Raises:
        ValueError: as :func:`warmup_length`, or a W2F split that leaves no frame to
            evaluate.
    """
    n_warm = warmup_length(num_frames, ratio)
    if int(ratio) == 100:
        return Split(range(num_frames), range(num_frames))
    if n_warm >= num_frames:
        raise ValueError(f"{num_frames} frames with a {ratio}% warm-up leave nothing to evaluate")
    return Split(range(n_warm), range(n_warm, num_frames))


class Method:
    """What ``ditta eval`` drives. A method may adapt on the warm-up frames
    (``adapt``), then predicts the evaluation frames one by one, in order, as a
    stream (``start_stream`` is called once before the first of them).

    ``predict`` returns labels in the *model's* label set; mapping to the clip's
    label set is the evaluator's job.

    ``frame_interval`` is the time between two consecutive frames the method is fed,
    in seconds, when known (the evaluator sets it from the clip's fps before
    ``start_stream``); ``None`` = unknown.
    """

    name = "method"
    frame_interval: Optional[float] = None

    def adapt(self, frames: Sequence[np.ndarray]) -> Dict[str, object]:
        """Adapt on the warm-up frames (uint8 RGB ``[H, W, 3]`` each); returns stats
        for result.json (e.g. ``adapt_seconds``)."""
        return {}

    def start_stream(self, eval_frames: Optional[Sequence[np.ndarray]] = None) -> None:
        """Reset any temporal state before the first evaluation frame. Offline methods
        (zs-refine) may read ``eval_frames`` (a lazy sequence of the evaluation frames);
        the time spent here counts in the method's fps."""

    def predict(self, frame: np.ndarray) -> Prediction:  # pragma: no cover
        raise NotImplementedError
