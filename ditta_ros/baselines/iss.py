"""The frame-wise ISS baseline: the pre-trained model on every frame, no adaptation,
no temporal add-on (the paper's "ISS" rows; official ``run_ditta.py --baseline``)."""

from __future__ import annotations

import numpy as np

from ..inference import ISSRunner, Prediction
from ..protocol import Method
from ..runtime import ServedISS


class FrameWiseISS(Method):
    """Frame-wise ISS predictions through an :class:`ISSRunner`."""

    name = "iss"

    def __init__(self, runner: ISSRunner):
        self.runner = runner

    def predict(self, frame: np.ndarray) -> Prediction:
        return self.runner.predict(frame)


class StreamingISS(ServedISS, Method):
    """The pre-trained model through the frozen streaming model with the add-on off
    (``tau = 0``, :class:`~ditta_ros.runtime.ServedISS`): the ISS model with exactly the
    preprocessing (in-graph antialiased resize) and output path that DiTTA streams with.
    Against :class:`FrameWiseISS` (PIL preprocessing, the reference implementation's) it
    measures that path's own effect, the noise floor of a DiTTA-vs-ISS comparison. The node
    serves its warm-up and ``adapt: false`` labels through the same :class:`ServedISS`.

    Args:
        runner: the ISS runner (its model).
        runtime: :class:`~ditta_ros.runtime.RuntimeOptions` of the plain-ISS graph (default:
            torch on the CPU).
    """

    name = "iss-stream"
