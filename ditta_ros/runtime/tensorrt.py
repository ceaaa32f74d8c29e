"""Direct TensorRT backend: engine built from the exported ONNX, cached, refittable.

Written against the documented TensorRT 10 Python API (``trt.Builder``,
``trt.OnnxParser``, ``IBuilderConfig`` timing cache, ``trt.Refitter`` with
``trt.OnnxParserRefitter``, ``IExecutionContext.execute_async_v3``). **Not run on
the development machines of this repository** (TensorRT cannot be installed
there); what can run without it -- the cache key, the error when it is absent,
the fallback in :func:`ditta_ros.runtime.select_backend` -- is tested.

* Engine cache: ``<cache_dir>/<stem>-<key>.engine`` with ``key`` from the ONNX
  sha256, the TensorRT version, the GPU name and the precision
  (:func:`engine_cache_key`): a new export, a TensorRT upgrade or another GPU
  never reuses a stale engine.
* Timing cache ``<cache_dir>/timing.cache`` shared by all builds (faster rebuilds).
* Engines are built with ``REFIT``: :meth:`TensorRTBackend.swap_weights` refits the
  engine from a re-exported ONNX of the same graph (adapted decoder weights)
  without a rebuild.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from typing import Optional

import numpy as np

from ..paths import ENGINE_CACHE

log = logging.getLogger("ditta.runtime")


def engine_cache_key(onnx_sha256: str, trt_version: str, gpu_name: str, fp16: bool) -> str:
    """16 hex digits identifying an engine: sha256 over the ONNX sha256, the
    TensorRT version, the GPU name and the precision."""
    text = "|".join([onnx_sha256, trt_version, gpu_name, "fp16" if fp16 else "fp32"])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise RuntimeError("the Python package 'tensorrt' is not installed (JetPack ships it; on a desktop "
                           "`pip install tensorrt`); use the onnxruntime or torch backend") from exc
    return trt


class RefitRefused(RuntimeError):
    """A refit that TensorRT refused before touching the engine (it still serves its old weights)."""


def build_engine(onnx_path: str, engine_path: str, fp16: bool, timing_cache: Optional[str] = None,
                 workspace_gib: float = 2.0) -> str:
    """Build a refittable engine from ``onnx_path`` and write it to ``engine_path``.

    Raises:
        RuntimeError: tensorrt missing, the ONNX does not parse (parser errors
        listed) or the build fails.
    """
    trt = _import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(onnx_path):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors} (an export with antialias=False avoids "
                           "the antialiased Resize if that is the culprit)")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    config.set_flag(trt.BuilderFlag.REFIT)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    cache_blob = b""
    if timing_cache and os.path.isfile(timing_cache):
        with open(timing_cache, "rb") as f:
            cache_blob = f.read()
    cache = config.create_timing_cache(cache_blob)
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT engine build failed for {onnx_path}")
    if timing_cache:
        tmp_cache = f"{timing_cache}.{os.getpid()}.{threading.get_ident()}.tmp"  # builds may run in two threads
        with open(tmp_cache, "wb") as f:
            f.write(memoryview(config.get_timing_cache().serialize()))
        os.replace(tmp_cache, timing_cache)
    tmp = f"{engine_path}.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(tmp, "wb") as f:
        f.write(memoryview(plan))
    os.replace(tmp, engine_path)
    return engine_path


class TensorRTBackend:
    """Runs the exported streaming model as a TensorRT engine (CUDA); I/O buffers are
    torch CUDA tensors, the state stays on the GPU between frames.

    Args:
        onnx_path: the exported model; its metadata JSON beside it.
        cache_dir: engine + timing cache folder (default :data:`ditta_ros.paths.ENGINE_CACHE`).
        fp16: build in fp16; ``None`` follows the metadata's ``precision``.

    Raises:
        RuntimeError: tensorrt or CUDA missing, or the build fails.
    """

    def __init__(self, onnx_path: str, cache_dir: Optional[str] = None, fp16: Optional[bool] = None):
        trt = _import_tensorrt()
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("the TensorRT backend needs a CUDA device")
        with open(os.path.splitext(onnx_path)[0] + ".json") as f:
            self.meta = json.load(f)
        self.fp16 = self.meta.get("precision") == "fp16" if fp16 is None else bool(fp16)
        self.frame_hw = tuple(self.meta["frame_hw"])
        cache_dir = cache_dir or os.path.expanduser(ENGINE_CACHE)
        os.makedirs(cache_dir, exist_ok=True)
        gpu = torch.cuda.get_device_name()
        key = engine_cache_key(self.meta["sha256"], trt.__version__, gpu, self.fp16)
        stem = os.path.splitext(os.path.basename(onnx_path))[0]
        self.engine_path = os.path.join(cache_dir, f"{stem}-{key}.engine")
        if os.path.isfile(self.engine_path):
            os.utime(self.engine_path)  # recently used: kept by the pruning of the engine folder
        else:
            log.info("building TensorRT engine %s (%s, %s); this takes minutes once", self.engine_path, gpu,
                     "fp16" if self.fp16 else "fp32")
            build_engine(onnx_path, self.engine_path, self.fp16, os.path.join(cache_dir, "timing.cache"))
        self._logger = trt.Logger(trt.Logger.WARNING)
        with open(self.engine_path, "rb") as f:
            self.engine = trt.Runtime(self._logger).deserialize_cuda_engine(f.read())
        self.context = self.engine.create_execution_context()
        dtypes = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
                  trt.DataType.INT64: torch.int64, trt.DataType.INT32: torch.int32,
                  trt.DataType.UINT8: torch.uint8, trt.DataType.BOOL: torch.bool}
        self.buffers = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            shape = tuple(self.engine.get_tensor_shape(name))
            self.buffers[name] = torch.empty(shape, dtype=dtypes[self.engine.get_tensor_dtype(name)], device="cuda")
            self.context.set_tensor_address(name, self.buffers[name].data_ptr())
        self.stream = torch.cuda.Stream()
        self._torch = torch

    def describe(self) -> str:
        """One line for logs: precision and engine file."""
        return f"tensorrt {'fp16' if self.fp16 else 'fp32'} engine {os.path.basename(self.engine_path)}"

    def initial_state(self):
        """Zero state on the GPU (``has_prev = 0``)."""
        t, b = self._torch, self.buffers
        # shaped like the next state (the graph's outputs): a graph that does not use an input has none
        return (t.zeros_like(b["feat"]), t.zeros_like(b["logits"]),
                t.zeros(self.frame_hw, dtype=_has_prev_dtype(t, b), device="cuda"))

    def step(self, frame: np.ndarray, state=None):
        """``(labels int64 [H,W], confidence float32 [H,W], state)`` (numpy outputs;
        the state stays on the GPU). Raises ``ValueError`` for a wrong frame."""
        if frame.dtype != np.uint8 or frame.shape != (*self.frame_hw, 3):
            raise ValueError(f"expected a uint8 frame of {self.frame_hw[0]}x{self.frame_hw[1]}x3, "
                             f"got {frame.shape} {frame.dtype}")
        state = state if state is not None else self.initial_state()
        b = self.buffers
        with self._torch.cuda.stream(self.stream):
            b["image"].copy_(self._torch.from_numpy(np.ascontiguousarray(frame)), non_blocking=True)
            for name, value in zip(("feat_prev", "logits_prev", "has_prev"), state):
                if name in b:  # the exporter drops the inputs a graph does not use (tau = 0: all three)
                    b[name].copy_(value, non_blocking=True)
            self.context.execute_async_v3(self.stream.cuda_stream)
            new_state = (b["feat"].clone(), b["logits"].clone(),
                         self._torch.ones(self.frame_hw, dtype=_has_prev_dtype(self._torch, b), device="cuda"))
        self.stream.synchronize()
        return b["labels"].cpu().numpy(), b["confidence"].float().cpu().numpy(), new_state

    def swap_weights(self, onnx_path: str) -> None:
        """Refit the engine with the weights of a re-export of the same graph (e.g.
        adapted decoder weights).

        Raises:
            RefitRefused: TensorRT would not take the weights (the engine is untouched).
            RuntimeError: the refit itself failed (the engine may hold part of the new weights).
        """
        trt = _import_tensorrt()
        refitter = trt.Refitter(self.engine, self._logger)
        parser_refitter = trt.OnnxParserRefitter(refitter, self._logger)
        if not parser_refitter.refit_from_file(onnx_path):
            raise RefitRefused(f"TensorRT refused the weights of {onnx_path} (graph differs from the engine's?)")
        if not refitter.refit_cuda_engine():
            raise RuntimeError(f"TensorRT refit from {onnx_path} failed")


def _has_prev_dtype(torch, buffers):
    """The dtype of ``has_prev``: the graph's input's where it has one, else float32."""
    return buffers["has_prev"].dtype if "has_prev" in buffers else torch.float32
