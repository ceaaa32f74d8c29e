"""The frame-wise ISS baseline: the pre-trained model on every frame, no adaptation,
no temporal add-on (the paper's "ISS" rows; official ``run_ditta.py --baseline``)."""

from __future__ import annotations

import numpy as np

from ..inference import ISSRunner, Prediction, label_dtype
from ..protocol import Method


class FrameWiseISS(Method):
    """Frame-wise ISS predictions through an :class:`ISSRunner`."""

    name = "iss"

    def __init__(self, runner: ISSRunner):
        self.runner = runner

    def predict(self, frame: np.ndarray) -> Prediction:
        return self.runner.predict(frame)


class StreamingISS(Method):
    """The pre-trained model through the frozen streaming model with the add-on off
    (``tau = 0``): the ISS model with exactly the preprocessing (in-graph antialiased
    resize) and output path that DiTTA streams with. Against :class:`FrameWiseISS`
    (PIL preprocessing, the reference implementation's) it measures that path's own
    effect, the noise floor of a DiTTA-vs-ISS comparison."""

    name = "iss-stream"

    def __init__(self, runner: ISSRunner):
        self.runner = runner
        self._model = None

    def predict(self, frame: np.ndarray) -> Prediction:
        from ..adapt import DiTTANet
        from ..streaming import StreamingDiTTA

        if self._model is None or self._model.frame_hw != tuple(frame.shape[:2]):
            self._model = StreamingDiTTA(DiTTANet(self.runner.model), frame.shape[:2], tau=0.0)
            if self.runner.channels_last:
                self._model.use_channels_last()
        labels, conf, _ = self._model.step(frame)
        return Prediction(labels.cpu().numpy().astype(label_dtype(self.runner.model.num_classes)),
                          conf.float().cpu().numpy())
