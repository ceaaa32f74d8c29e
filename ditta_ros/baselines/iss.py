"""The frame-wise ISS baseline: the pre-trained model on every frame, no adaptation,
no temporal add-on (the paper's "ISS" rows; official ``run_ditta.py --baseline``)."""

from __future__ import annotations

import logging
import time

import numpy as np

from ..inference import ISSRunner, Prediction, label_dtype
from ..protocol import Method

log = logging.getLogger("ditta.iss")


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
    effect, the noise floor of a DiTTA-vs-ISS comparison.

    The node serves its warm-up and ``adapt: false`` labels through this class too.

    Args:
        runner: the ISS runner (its model).
        backend: runtime of the plain-ISS graph: ``torch`` (default) | ``openvino`` |
            ``onnxruntime`` | ``tensorrt`` | ``auto`` (what the node serves the ISS phase with).
        options: :func:`ditta_ros.runtime.streaming_backend` keywords (``export_dir``,
            ``engine_cache``, ``fp16``, ``openvino_device``, ``openvino_precision``).
    """

    name = "iss-stream"

    def __init__(self, runner: ISSRunner, backend: str = "torch", **options):
        self.runner = runner
        self.backend = backend
        self.options = options
        self._model = None
        self._hw = None

    def predict(self, frame: np.ndarray) -> Prediction:
        from ..adapt import DiTTANet
        from ..runtime import streaming_backend

        if self._model is None or self._hw != tuple(frame.shape[:2]):
            self._hw = tuple(frame.shape[:2])
            t0 = time.perf_counter()
            self._model = streaming_backend(DiTTANet(self.runner.model), self._hw, 0.0, self.backend, **self.options)
            log.info("ISS model on %s for %dx%d frames (ready in %.1f s)", self._model.describe(), self._hw[1],
                     self._hw[0], time.perf_counter() - t0)
        labels, conf, _ = self._model.step(frame, None)
        return Prediction(np.asarray(labels).astype(label_dtype(self.runner.model.num_classes)),
                          np.asarray(conf, dtype=np.float32))
