"""Runtime backends for the frozen streaming model, one interface:

    backend.step(frame uint8 [H, W, 3], state | None) -> (labels [H, W], confidence [H, W], state)

* ``torch``: :class:`~ditta_ros.streaming.StreamingDiTTA` on CPU or CUDA (:mod:`.torch_backend`);
* ``tensorrt``: a TensorRT engine built from the exported ONNX (fp16, engine and
  timing cache, refit; :mod:`.tensorrt`, not run here), else onnxruntime's
  TensorRT execution provider (fp16 + engine cache);
* ``openvino``: the exported ONNX compiled by OpenVINO for a CPU, integrated GPU
  or NPU (:mod:`.openvino`; the fast path on CPU-only robots);
* ``onnxruntime``: the exported ONNX on the CUDA execution provider when present,
  else the CPU one (:mod:`.ort`).

Modules: :mod:`.options` (:class:`RuntimeOptions`, the one object that says how and where
to run), :mod:`.select` (the fallback chain tensorrt -> openvino -> onnxruntime -> torch),
:mod:`.export_cache` (exports cached per model, frame size and weights), :mod:`.serving`
(:func:`streaming_backend`, :class:`FrozenDiTTA`, :class:`ServedISS`).
"""

from .options import BACKENDS, CHAIN, RuntimeOptions
from .select import select_backend
from .serving import FrozenDiTTA, ServedISS, SkipAddon, streaming_backend

__all__ = ["BACKENDS", "CHAIN", "FrozenDiTTA", "RuntimeOptions", "ServedISS", "SkipAddon", "select_backend",
           "streaming_backend"]
