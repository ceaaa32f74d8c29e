"""onnxruntime backend for an exported streaming model (see :mod:`ditta_ros.export`)."""

from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import numpy as np


class OrtBackend:
    """Runs ``ditta_*.onnx`` with onnxruntime; state carried as numpy arrays.

    Args:
        onnx_path: the exported model; its metadata JSON must sit beside it.
        prefer: execution providers to try before the CPU one, in order.
        engine_cache: TensorRT EP engine/timing cache folder (TensorRT EP only).
        fp16: TensorRT EP fp16 (TensorRT EP only).

    Raises:
        FileNotFoundError: the ONNX or its metadata is missing.
    """

    def __init__(self, onnx_path: str, prefer: Sequence[str] = (), engine_cache: Optional[str] = None,
                 fp16: bool = False):
        import onnxruntime as ort

        meta_path = os.path.splitext(onnx_path)[0] + ".json"
        for p in (onnx_path, meta_path):
            if not os.path.isfile(p):
                raise FileNotFoundError(f"exported model file missing: {p}")
        with open(meta_path) as f:
            self.meta = json.load(f)
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
        self.frame_hw = tuple(self.meta["frame_hw"])
        self._inputs = [i.name for i in self.session.get_inputs()]

    def describe(self) -> str:
        """One line for logs: the providers in use and the model."""
        return f"onnxruntime {'/'.join(self.session.get_providers())}, {os.path.basename(self.meta.get('model', ''))}"

    def initial_state(self):
        """Zero state ``(feat_prev, logits_prev, has_prev = 0)`` with the metadata's shapes."""
        return tuple(np.zeros(s, dtype=d) for k, (d, s) in self.meta["inputs"].items() if k != "image")

    def step(self, frame: np.ndarray, state=None):
        """``(labels int64 [H,W], confidence float32 [H,W], state)``; raises ``ValueError``
        for a frame of the wrong size or dtype."""
        if frame.dtype != np.uint8 or frame.shape != (*self.frame_hw, 3):
            raise ValueError(f"expected a uint8 frame of {self.frame_hw[0]}x{self.frame_hw[1]}x3, "
                             f"got {frame.shape} {frame.dtype}")
        state = state if state is not None else self.initial_state()
        feed = {"image": np.ascontiguousarray(frame), "feat_prev": state[0], "logits_prev": state[1],
                "has_prev": state[2]}
        # a tau = 0 export (plain ISS branch) has no use for the state inputs; the exporter drops them
        labels, conf, feat, logits = self.session.run(None, {k: feed[k] for k in self._inputs})
        return labels, conf, (feat, logits, np.ones(self.frame_hw, np.float32))
