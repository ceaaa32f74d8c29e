"""How and where the frozen model runs: one :class:`RuntimeOptions` object, passed whole
from its owner (the node's parameters, ``ditta eval`` flags, a suite variant) to the
runtime (:func:`ditta_ros.runtime.streaming_backend`, :class:`ditta_ros.runtime.serving.FrozenDiTTA`).

Adding an option touches this class, the parameter table (:mod:`ditta_ros.params`) and the
backend that reads it; nothing in between.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict

from ..paths import ENGINE_CACHE, EXPORT_DIR
from .openvino import PRECISIONS

#: the backends in fallback order (``auto`` walks it from the start)
CHAIN = ("tensorrt", "openvino", "onnxruntime", "torch")
#: what a ``backend`` option accepts
BACKENDS = ("auto",) + CHAIN


@dataclass(frozen=True)
class RuntimeOptions:
    """Runtime of the frozen streaming model.

    Attributes:
        backend: ``auto`` | ``tensorrt`` | ``openvino`` | ``onnxruntime`` | ``torch``
            (:func:`ditta_ros.runtime.select_backend`).
        device: torch device of the ISS model, the adaptation and the torch backend
            (``cpu`` | ``cuda`` | ``cuda:N`` | ``auto``).
        threads: torch intra-op threads (0: torch's default, one per core).
        fp16: half precision on TensorRT and torch CUDA.
        openvino_device: OpenVINO device name (``CPU`` | ``GPU`` | ``GPU.N`` | ``NPU``).
        openvino_precision: ``auto`` (the device's default: bf16 on CPUs with bf16 units) |
            ``f32`` | ``bf16`` | ``f16`` (:class:`~ditta_ros.runtime.openvino.OpenVINOBackend`).
        openvino_threads: OpenVINO CPU inference threads (``INFERENCE_NUM_THREADS``; 0: OpenVINO's choice,
            one per core). Fewer than the cores helps where other processes (camera driver, recorder, other
            nodes) share them: ``bench/live_speed.py``.
        openvino_streams: 1 (one request per frame), >= 2: the stateless part of an OpenVINO graph with a
            temporal branch on that many streams while frames are fused in order
            (:class:`~ditta_ros.runtime.openvino.PipelinedOpenVINO`; the node overlaps consecutive frames
            while the camera is ahead of it), or 0: :func:`~ditta_ros.runtime.openvino.auto_streams` (the
            measured rule's choice: 1 on every CPU measured).
            Labels unchanged (``bench/pipeline_speed.py``).
        export_dir: folder of the exported ONNX graphs (``~`` allowed).
        engine_cache: TensorRT engines and OpenVINO compiled models (``~`` allowed).

    Raises:
        ValueError: an unknown ``backend`` or ``openvino_precision``, ``threads`` / ``openvino_threads`` < 0,
            or ``openvino_streams`` < 0.
    """

    backend: str = "torch"
    device: str = "cpu"
    threads: int = 0
    fp16: bool = False
    openvino_device: str = "CPU"
    openvino_precision: str = "auto"
    openvino_threads: int = 0
    openvino_streams: int = 1
    export_dir: str = EXPORT_DIR
    engine_cache: str = ENGINE_CACHE

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; choose {', '.join(BACKENDS)}")
        if self.openvino_precision not in PRECISIONS:
            raise ValueError(f"OpenVINO precision must be one of {', '.join(PRECISIONS)}, "
                             f"got {self.openvino_precision!r}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")
        if self.openvino_threads < 0:
            raise ValueError(f"openvino_threads must be >= 0, got {self.openvino_threads}")
        if self.openvino_streams < 0:
            raise ValueError(f"openvino_streams must be >= 0, got {self.openvino_streams}")

    def replace(self, **changes) -> "RuntimeOptions":
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)

    def hyper(self) -> Dict[str, object]:
        """The runtime's part of a run's stored hyper-parameters (``result.json`` ``hyper``):
        only what differs from the torch defaults, so runs stored before an option existed
        stay comparable."""
        out: Dict[str, object] = {}
        if self.backend != "torch":
            out["backend"] = self.backend
        if self.fp16:
            out["fp16"] = True
        if self.backend in ("openvino", "auto"):
            out["openvino_precision"] = self.openvino_precision
        return out
