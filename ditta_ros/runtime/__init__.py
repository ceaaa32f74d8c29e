"""Runtime backends for the frozen streaming model, one interface:

    backend.step(frame uint8 [H, W, 3], state | None) -> (labels [H, W], confidence [H, W], state)

* ``torch``: :class:`~ditta_ros.streaming.StreamingDiTTA` on CPU or CUDA;
* ``tensorrt``: a TensorRT engine built from the exported ONNX (fp16, engine and
  timing cache, refit; :mod:`.tensorrt`, not run here), else onnxruntime's
  TensorRT execution provider (fp16 + engine cache);
* ``onnxruntime``: the exported ONNX on the CUDA execution provider when present,
  else the CPU one;

:func:`select_backend` walks the fallback chain tensorrt -> onnxruntime -> torch
and logs which backend it chose and why the others were skipped.
"""

from __future__ import annotations

import logging
from typing import List, Optional

log = logging.getLogger("ditta.runtime")

CHAIN = ("tensorrt", "onnxruntime", "torch")


def available_ort_providers() -> List[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


def accelerated_runtime_available() -> bool:
    """True when a GPU runtime for the exported model exists here: the ``tensorrt``
    package, or onnxruntime's CUDA / TensorRT execution provider. Without one,
    ``select_backend("auto", ...)`` ends on torch, so exporting first is wasted work."""
    if any(p in available_ort_providers() for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider")):
        return True
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


def _metadata_fp16(onnx_path: Optional[str]) -> bool:
    import json
    import os

    meta = os.path.splitext(onnx_path)[0] + ".json" if onnx_path else ""
    if not meta or not os.path.isfile(meta):
        return False
    with open(meta) as f:
        return json.load(f).get("precision") == "fp16"


def select_backend(requested: str = "auto", onnx_path: Optional[str] = None, torch_model=None,
                   engine_cache: Optional[str] = None, fp16: Optional[bool] = None):
    """The first usable backend of the chain starting at ``requested``.

    ``tensorrt`` tries the direct TensorRT engine (:mod:`.tensorrt`), then
    onnxruntime's TensorRT execution provider; ``onnxruntime`` uses the CUDA EP
    when present, else the CPU; ``torch`` runs the streaming model itself. With
    ``auto`` on a machine whose onnxruntime has only the CPU EP, torch is chosen
    over onnxruntime when a torch model is given (faster there, measured in
    ``bench/streaming_speed.py``); ask for ``onnxruntime`` to get it anyway.

    Args:
        requested: ``auto`` | ``tensorrt`` | ``onnxruntime`` | ``torch``.
        onnx_path: exported model (needed by tensorrt/onnxruntime).
        torch_model: a :class:`StreamingDiTTA` (needed by torch).
        engine_cache: TensorRT engine + timing cache folder.
        fp16: half precision where the backend supports it; ``None`` follows the
            export metadata's ``precision``.

    Raises:
        ValueError: unknown ``requested``.
        RuntimeError: nothing in the chain is usable (lists why for each).
    """
    if requested not in ("auto",) + CHAIN:
        raise ValueError(f"unknown backend {requested!r}; choose auto, {', '.join(CHAIN)}")
    fp16 = _metadata_fp16(onnx_path) if fp16 is None else bool(fp16)
    chain = CHAIN if requested == "auto" else CHAIN[CHAIN.index(requested):]
    reasons = []
    for name in chain:
        backend = None
        if name == "tensorrt":
            if onnx_path is None:
                reasons.append("tensorrt: no ONNX model")
                continue
            try:
                from .tensorrt import TensorRTBackend

                backend = TensorRTBackend(onnx_path, engine_cache, fp16)
            except RuntimeError as exc:
                reasons.append(f"tensorrt: {exc}")
            if backend is None:
                if "TensorrtExecutionProvider" not in available_ort_providers():
                    reasons.append("tensorrt (onnxruntime EP): onnxruntime has no TensorrtExecutionProvider here")
                    continue
                from .ort import OrtBackend

                backend = OrtBackend(onnx_path, prefer=("TensorrtExecutionProvider",), engine_cache=engine_cache,
                                     fp16=fp16)
        elif name == "onnxruntime":
            if onnx_path is None:
                reasons.append("onnxruntime: no ONNX model")
                continue
            if (requested == "auto" and torch_model is not None
                    and "CUDAExecutionProvider" not in available_ort_providers()):
                # measured: the add-on's windowed attention runs ~3x slower in onnxruntime's CPU EP than in
                # torch (bench/results/streaming_speed.md), so auto prefers torch on CPU-only machines
                reasons.append("onnxruntime: CPU execution provider only (torch is faster on the CPU)")
                continue
            from .ort import OrtBackend

            backend = OrtBackend(onnx_path, prefer=("CUDAExecutionProvider",))
        else:
            if torch_model is None:
                reasons.append("torch: no torch model")
                continue
            from .torch_backend import TorchBackend

            backend = TorchBackend(torch_model, fp16=fp16)
        log.info("runtime backend: %s (%s)%s", name, backend.describe(),
                 "; skipped " + "; ".join(reasons) if reasons else "")
        return backend
    raise RuntimeError("no usable runtime backend: " + "; ".join(reasons))
