"""The backend chain: :func:`select_backend` picks the first usable runtime for an exported
streaming model, walking tensorrt -> openvino -> onnxruntime -> torch from the requested one
(:data:`~ditta_ros.runtime.options.CHAIN`), and logs which it chose and why the others were
skipped. Every backend has one interface::

    backend.step(frame uint8 [H, W, 3], state | None) -> (labels [H, W], confidence [H, W], state)
"""

from __future__ import annotations

import logging
from typing import List, Optional

from .options import CHAIN, RuntimeOptions

log = logging.getLogger("ditta.runtime")

def available_ort_providers() -> List[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


def accelerated_runtime_available() -> bool:
    """True when a runtime faster than torch for the exported model exists here: the
    ``tensorrt`` or ``openvino`` package, or onnxruntime's CUDA / TensorRT execution
    provider. Without one, ``select_backend("auto", ...)`` ends on torch, so exporting
    first is wasted work."""
    from .openvino import openvino_devices

    if openvino_devices():
        return True
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


def select_backend(options: RuntimeOptions = RuntimeOptions(backend="auto"), onnx_path: Optional[str] = None,
                   torch_model=None, engine_dir: Optional[str] = None):
    """The first usable backend of the chain starting at ``options.backend``.

    ``tensorrt`` tries the direct TensorRT engine (:mod:`.tensorrt`), then
    onnxruntime's TensorRT execution provider; ``openvino`` compiles the ONNX for
    ``options.openvino_device`` in ``options.openvino_precision``; ``onnxruntime`` uses the
    CUDA EP when present, else the CPU; ``torch`` runs the streaming model itself. With
    ``auto`` on a machine whose onnxruntime has only the CPU EP, torch is chosen
    over onnxruntime when a torch model is given (faster there, measured in
    ``bench/streaming_speed.py``); ask for ``onnxruntime`` to get it anyway.

    Args:
        options: :class:`~ditta_ros.runtime.options.RuntimeOptions` (backend, fp16, OpenVINO
            device and precision). Half precision also follows an export marked ``fp16``.
        onnx_path: exported model (needed by tensorrt/openvino/onnxruntime).
        torch_model: a :class:`~ditta_ros.streaming.StreamingDiTTA` (needed by torch), or a
            zero-argument callable returning one (built only when the chain reaches torch).
        engine_dir: TensorRT engine + timing cache folder; OpenVINO's compiled-model cache
            goes to its ``openvino`` subfolder (``None``: ``options.engine_cache``; empty: no cache).

    Raises:
        RuntimeError: nothing in the chain is usable (lists why for each).
    """
    import os

    requested = options.backend
    fp16 = options.fp16 or _metadata_fp16(onnx_path)
    engine_cache = engine_dir or (os.path.expanduser(options.engine_cache) if options.engine_cache else None)
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
        elif name == "openvino":
            if onnx_path is None:
                reasons.append("openvino: no ONNX model")
                continue
            try:
                from .openvino import OpenVINOBackend

                backend = OpenVINOBackend(onnx_path, options.openvino_device, engine_cache,
                                          precision=options.openvino_precision,
                                          threads=options.openvino_threads)
            except RuntimeError as exc:
                reasons.append(f"openvino: {exc}")
                continue
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

            # a factory, or the model itself (a module is callable too: it has ``step``)
            backend = TorchBackend(torch_model() if callable(torch_model) and not hasattr(torch_model, "step")
                                   else torch_model, fp16=fp16)
        log.info("runtime backend: %s (%s)%s", name, backend.describe(),
                 "; skipped " + "; ".join(reasons) if reasons else "")
        return backend
    raise RuntimeError("no usable runtime backend: " + "; ".join(reasons))
