"""The frame-wise ISS baseline: the pre-trained model on every frame, no adaptation,
no temporal add-on (the paper's "ISS" rows; official ``run_ditta.py --baseline``)."""

from __future__ import annotations

import numpy as np

from ..inference import ISSRunner, Prediction
from ..protocol import Method


class FrameWiseISS(Method):
    """Frame-wise ISS predictions through an :class:`ISSRunner`."""

    name = "iss"

    def __init__(self, runner: ISSRunner):
        self.runner = runner

    def predict(self, frame: np.ndarray) -> Prediction:
        return self.runner.predict(frame)
