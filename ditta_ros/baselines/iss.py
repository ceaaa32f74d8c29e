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
    effect, the noise floor of a DiTTA-vs-ISS comparison.

    Args:
        runner: the ISS runner (its model).
        backend: runtime of the plain-ISS graph: ``torch`` (default) | ``openvino`` |
            ``onnxruntime`` | ``tensorrt`` | ``auto`` (what the node serves the ISS phase with).
        export_dir: where its export is cached (``None``: the runtime's default).
        fp16: half precision on TensorRT / torch CUDA.
        openvino_precision: ``auto`` (the device's default: bf16 on CPUs with bf16 units) | ``f32``.
    """

    name = "iss-stream"

    def __init__(self, runner: ISSRunner, backend: str = "torch", export_dir=None, fp16: bool = False,
                 openvino_precision: str = "auto"):
        self.runner = runner
        self.backend = backend
        self.fp16 = bool(fp16)
        self.openvino_precision = openvino_precision
        self.export_dir = export_dir
        self._model = None
        self._hw = None

    def predict(self, frame: np.ndarray) -> Prediction:
        from ..adapt import DiTTANet
        from ..runtime import streaming_backend

        if self._model is None or self._hw != tuple(frame.shape[:2]):
            self._hw = tuple(frame.shape[:2])
            self._model = streaming_backend(DiTTANet(self.runner.model), self._hw, 0.0, self.backend,
                                            export_dir=self.export_dir, fp16=self.fp16,
                                            openvino_precision=self.openvino_precision,
                                            name=getattr(getattr(self.runner.model, "info", None), "name", "model"))
        labels, conf, _ = self._model.step(frame, None)
        return Prediction(np.asarray(labels).astype(label_dtype(self.runner.model.num_classes)),
                          np.asarray(conf, dtype=np.float32))
