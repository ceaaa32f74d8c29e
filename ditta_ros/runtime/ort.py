"""onnxruntime backend for an exported streaming model (see :mod:`ditta_ros.export`)."""

from __future__ import annotations

import os
from typing import Optional, Sequence

from .exported import ExportedGraph


class OrtBackend(ExportedGraph):
    """Runs ``ditta_*.onnx`` with onnxruntime; state carried as numpy arrays.

    Args:
        onnx_path: the exported model; its metadata JSON must sit beside it.
        prefer: execution providers to try before the CPU one, in order.
        engine_cache: TensorRT EP engine/timing cache folder (TensorRT EP only).
        fp16: TensorRT EP fp16 (TensorRT EP only).

    Raises:
        FileNotFoundError: the ONNX or its metadata is missing.
    """

    name = "onnxruntime"  #: the backend name of :data:`ditta_ros.runtime.CHAIN`

    def __init__(self, onnx_path: str, prefer: Sequence[str] = (), engine_cache: Optional[str] = None,
                 fp16: bool = False):
        import onnxruntime as ort

        super().__init__(onnx_path)
        available = ort.get_available_providers()
        providers = []
        for name in prefer:
            if name not in available:
                continue
            if name == "TensorrtExecutionProvider":
                opts = {"trt_fp16_enable": bool(fp16), "trt_engine_cache_enable": bool(engine_cache),
                        "trt_timing_cache_enable": bool(engine_cache)}
                if engine_cache:
                    os.makedirs(engine_cache, exist_ok=True)
                    opts.update(trt_engine_cache_path=engine_cache, trt_timing_cache_path=engine_cache)
                providers.append((name, opts))
            else:
                providers.append(name)
        providers.append("CPUExecutionProvider")
        self.session = ort.InferenceSession(onnx_path, providers=providers)
        if self.session.get_providers()[0] == "TensorrtExecutionProvider":
            self.name = "tensorrt"  # the chain's tensorrt step, through onnxruntime
        self._inputs = [i.name for i in self.session.get_inputs()]

    def describe(self) -> str:
        """One line for logs: the providers in use and the model."""
        return f"onnxruntime {'/'.join(self.session.get_providers())}, {self._model_name()}"

    def _run(self, feed):
        # a tau = 0 export (plain ISS branch) has no use for the state inputs; the exporter drops them
        return tuple(self.session.run(None, {k: feed[k] for k in self._inputs}))
