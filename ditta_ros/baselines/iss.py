"""The frame-wise ISS baseline: the pre-trained model on every frame, no adaptation,
no temporal add-on (the paper's "ISS" rows; official ``run_ditta.py --baseline``)."""

from __future__ import annotations

import logging
import time

import numpy as np

from ..inference import ISSRunner, Prediction
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
        self._ready = {}  # frame_hw -> backend; filled by prepare(), possibly from another thread

    def prepare(self, frame_hw) -> None:
        """Export (cached) and load the plain-ISS graph for frames of ``frame_hw``.

        Raises:
            RuntimeError / ValueError: no usable backend (:func:`ditta_ros.runtime.streaming_backend`).
        """
        from ..adapt import DiTTANet
        from ..runtime import streaming_backend

        hw = (int(frame_hw[0]), int(frame_hw[1]))
        t0 = time.perf_counter()
        model = streaming_backend(DiTTANet(self.runner.model), hw, 0.0, self.backend, **self.options)
        log.info("ISS model on %s for %dx%d frames (ready in %.1f s)", model.describe(), hw[1], hw[0],
                 time.perf_counter() - t0)
        if len(self._ready) >= 4:  # a few sizes at most (a camera that changes size now and then)
            self._ready.pop(next(iter(self._ready)), None)
        self._ready[hw] = model

    @property
    def prepared(self) -> bool:
        """True once a graph has been prepared for some frame size."""
        return bool(self._ready)

    def ready_for(self, frame_hw) -> bool:
        """True when frames of ``frame_hw`` are served without preparing first."""
        return tuple(frame_hw) in self._ready

    def predict(self, frame: np.ndarray) -> Prediction:
        """uint8 RGB ``[H, W, 3]`` -> labels and Eq. 2 reliability at frame size (prepares the
        graph for a new size first). Raises ``ValueError`` for a bad frame."""
        hw = tuple(frame.shape[:2])
        model = self._ready.get(hw)
        if model is None:
            self.prepare(hw)
            model = self._ready[hw]
        labels, conf, _ = model.step(frame, None)
        return Prediction.of(labels, conf, self.runner.model.num_classes)
