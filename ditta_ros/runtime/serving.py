"""Serving a network on a runtime backend: one construction for the node, ``ditta eval`` and
the benchmarks.

* :func:`streaming_backend` -- the backend that serves a (pre-trained or adapted) network on
  frames of one size: export (cached, :mod:`.export_cache`), backend chain (:mod:`.select`),
  refit of a serving engine in place, and :class:`SkipAddon` (the plain graph where no pixel
  may use the previous frame);
* :class:`FrozenDiTTA` -- an adapted network frozen for serving: a backend per frame size,
  the state carried frame to frame, the fusion gates (:mod:`ditta_ros.gates`) applied;
* :class:`ServedISS` -- the pre-trained model's plain graph (``tau = 0``), a backend per frame
  size (the node's warm-up, ``adapt: false`` and fallback labels; ``ditta eval --method
  iss-stream``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np

from ..gates import FlowWarp, MotionGate, apply_gates
from ..inference import Prediction
from ..paths import EXPORT_DIR
from ..presets import DittaConfig
from ..streaming import StreamingDiTTA
from .export_cache import KEEP_EXPORTS, cached_export, prune_exports
from .options import RuntimeOptions
from .select import accelerated_runtime_available, select_backend

log = logging.getLogger("ditta.runtime")


@dataclass
class StreamStats:
    """What a stream of :meth:`FrozenDiTTA.step` calls did: ``frames`` stepped, ``fused`` (frames on
    which some pixel could use the previous frame, so the temporal branch ran: not the first frame of a
    stream, not beyond ``max_gap``, not gated everywhere by the motion gate), and the known intervals
    between consecutive frames (seconds; their sum and count)."""

    frames: int = 0
    fused: int = 0
    gap_sum: float = 0.0
    gaps: int = 0

    def add(self, interval: Optional[float], fused: bool) -> None:
        """Count one frame (``interval``: seconds since the previous one, ``None`` unknown)."""
        self.frames += 1
        self.fused += int(bool(fused))
        if interval is not None:
            self.gap_sum += float(interval)
            self.gaps += 1

    def as_dict(self) -> Dict[str, object]:
        """``{"streamed_frames", "fused_share" (0..1; ``None`` before a frame), "frame_gap_s" (mean
        processed-frame gap, s; ``None`` when unknown)}``."""
        return {"streamed_frames": self.frames,
                "fused_share": round(self.fused / self.frames, 4) if self.frames else None,
                "frame_gap_s": round(self.gap_sum / self.gaps, 4) if self.gaps else None}


def streaming_backend(net, frame_hw, tau: float, options: RuntimeOptions = RuntimeOptions(), name: Optional[str] = None,
                      label_set: str = "", classes=(), fusion: str = "frame", refit=None, refit_lock=None,
                      flow_grid: str = "addon"):
    """The runtime backend that serves a (pre-trained or adapted) network on frames of
    ``frame_hw`` (module docstring).

    The exported ONNX lives in ``<options.export_dir>/<name>_<H>x<W>/``
    (:func:`~.export_cache.cached_export`): the plain ISS graph (``tau = 0``) of a model and
    frame size is exported once and reused across restarts; an adapted network gets its own
    file. No export is made when the chain ends on torch anyway (``auto`` without an
    accelerated runtime, or ``torch``).

    Args:
        net: :class:`~ditta_ros.adapt.DiTTANet` (not modified: the export copies it).
        frame_hw: ``(H, W)`` frame size in pixels.
        tau: fusion threshold (0 = plain ISS branch only).
        options: :class:`~.options.RuntimeOptions` (backend, precision, devices, cache folders;
            the torch backend runs channels-last on the CPU).
        name: model name used in file names and metadata (default: the ISS model's
            ``info.name``, as :func:`ditta_ros.iss.load_model` attaches it).
        label_set, classes: recorded in the export metadata.
        fusion: one of :data:`~ditta_ros.presets.FUSIONS` (:class:`~ditta_ros.streaming.StreamingDiTTA`).
        flow_grid: the grid of a flow fusion's state, one of :data:`~ditta_ros.presets.FLOW_GRIDS`.
        refit: a backend serving the same model and frame size with other weights (a
            re-adaptation): when it can swap weights in place (TensorRT's refittable
            engines, ``swap_weights``) it is refitted from the new export and returned,
            instead of building a new engine. The export runs first; only the swap holds
            ``refit_lock`` (the serving thread's step lock). A failed refit marks ``refit``
            unusable (``unusable`` attribute: TensorRT may have swapped part of the
            weights) and a new engine is built.
        refit_lock: a lock held around ``swap_weights`` (``None``: none).

    Returns:
        a backend with ``step(frame, state) -> (labels, confidence, state)`` and ``describe()``: with
        ``tau > 0``, ``fusion="flow"`` (the only fusion whose temporal branch needs nothing of the current frame
        but its ISS logits) on OpenVINO and ``options.openvino_streams`` 2 or more (0: :func:`~.openvino.auto_streams`),
        a :class:`~.openvino.PipelinedOpenVINO` (also ``start`` / ``finish``) on an export with the
        ``plain_logits`` output; where that cannot be built, the one-request chain.

    Raises:
        RuntimeError: as :func:`~.select.select_backend`.
    """
    requested = options.backend
    frame_hw = (int(frame_hw[0]), int(frame_hw[1]))
    name = name or getattr(getattr(net.iss, "info", None), "name", None) or "model"
    # engines, like exports, in one folder per model and frame size (an empty engine_cache: no engine cache;
    # an empty export_dir: the default folder)
    engine_dir = os.path.join(os.path.expanduser(options.engine_cache), f"{name}_{frame_hw[0]}x{frame_hw[1]}") \
        if options.engine_cache else None
    if tau > 0 and fusion == "flow" and refit is None and requested != "torch" and _openvino_first(options):
        from .openvino import auto_streams

        streams = options.openvino_streams or auto_streams()
        backend = _pipelined(net, frame_hw, tau, options, name, fusion, label_set, classes, engine_dir,
                             streams, flow_grid) if streams > 1 else None
        if backend is not None:
            _prune(engine_dir, backend)
            return backend
    onnx_path = None
    if requested != "torch" and (requested != "auto" or accelerated_runtime_available()):
        onnx_path = cached_export(net, frame_hw, tau, options.export_dir or EXPORT_DIR, name, options.fp16, fusion,
                                  label_set, classes, flow_grid=flow_grid)
    if refit is not None and onnx_path is not None and _same_graph(refit, onnx_path, frame_hw):
        from .tensorrt import RefitRefused

        try:
            with refit_lock if refit_lock is not None else contextlib.nullcontext():
                refit.swap_weights(onnx_path)
            log.info("refitted the %s engine with the weights of %s", getattr(refit, "name", "runtime"), onnx_path)
            return refit
        except RefitRefused as exc:  # the engine is untouched and keeps serving
            log.warning("the engine refused the new weights (%s): building a new one", exc)
        except Exception as exc:
            refit.unusable = f"refit failed: {exc}"
            log.warning("refitting the engine failed (%s): building a new one", exc)

    def torch_model():  # built only when the chain reaches torch (its construction runs the network once)
        return StreamingDiTTA(net, frame_hw, tau, fusion=fusion, flow_grid=flow_grid)

    backend = select_backend(options, onnx_path=onnx_path, torch_model=torch_model, engine_dir=engine_dir)
    _prune(engine_dir, backend)
    if tau > 0 and getattr(backend, "name", None) in ("openvino", "onnxruntime"):
        # a second, plain graph for the frames where no pixel may use the previous one
        plain = streaming_backend(net, frame_hw, 0.0, options.replace(backend=backend.name), name=name,
                                  label_set=label_set, classes=classes, flow_grid=flow_grid)  # the same state layout
        backend = SkipAddon(backend, plain)
    return backend


def _prune(engine_dir: Optional[str], backend) -> None:
    """Keep the engine folder of a model and frame size from filling the disk with every re-adaptation:
    its TensorRT engines and, for OpenVINO, its compiled-model cache folders."""
    if engine_dir and os.path.isdir(engine_dir):
        prune_exports(engine_dir, KEEP_EXPORTS)
        if getattr(backend, "name", None) == "openvino":
            from .openvino import prune_cache

            prune_cache(os.path.join(engine_dir, "openvino"), 2 * KEEP_EXPORTS)


def _openvino_first(options: RuntimeOptions) -> bool:
    """True when the backend chain would pick OpenVINO: asked for, or ``auto`` without a CUDA device
    (where TensorRT and CUDA come first) and with the ``openvino`` package."""
    if options.backend == "openvino":
        return True
    if options.backend != "auto":
        return False
    import importlib.util

    import torch

    return not torch.cuda.is_available() and importlib.util.find_spec("openvino") is not None


def _pipelined(net, frame_hw, tau, options: RuntimeOptions, name, fusion, label_set, classes, engine_dir,
               streams: int, flow_grid: str = "addon"):
    """A :class:`~.openvino.PipelinedOpenVINO` on the export with the ``plain_logits`` output
    (``streams`` streams), or ``None`` (logged) where it cannot be built: the one-request chain serves
    instead."""
    try:
        from .openvino import PipelinedOpenVINO

        path = cached_export(net, frame_hw, tau, options.export_dir or EXPORT_DIR, name, options.fp16, fusion,
                             label_set, classes, plain_logits=True, flow_grid=flow_grid)
        backend = PipelinedOpenVINO(path, options.openvino_device, engine_dir, precision=options.openvino_precision,
                                    streams=streams, threads=options.openvino_threads)
    except Exception as exc:
        log.warning("openvino_streams=%d: no pipelined backend (%s); one request per frame", streams, exc)
        return None
    log.info("runtime backend: %s", backend.describe())
    return backend


def _same_graph(backend, onnx_path: str, frame_hw) -> bool:
    """True when ``backend`` can take the weights of ``onnx_path`` in place: it can swap
    weights, serves the same frame size and, where it knows its export's metadata, the same
    tau, fusion, ``flow_grid`` and precision."""
    if not hasattr(backend, "swap_weights") or tuple(getattr(backend, "frame_hw", ())) != tuple(frame_hw):
        return False
    meta = getattr(backend, "meta", None)
    if not isinstance(meta, dict):
        return True
    with open(onnx_path[:-len(".onnx")] + ".json") as f:
        new = json.load(f)
    return all(meta.get(k) == new.get(k) for k in ("tau", "fusion", "precision", "frame_hw")) \
        and meta.get("flow_grid", "addon") == new.get("flow_grid", "addon")


class SkipAddon:
    """A streaming backend that runs the plain graph (``tau = 0``, no add-on) whenever no
    pixel of the state may use the previous frame (``has_prev`` all 0: a stream's first
    frame, frames farther apart than ``max_gap``), and the full graph otherwise. The
    result is the same (the fusion keeps the plain branch wherever ``has_prev = 0``); the
    add-on's cost is only paid when it can change a label. Same interface as the backends."""

    def __init__(self, full, plain):
        self.full, self.plain = full, plain
        self.frame_hw = full.frame_hw

    def describe(self) -> str:
        """The full graph's description."""
        return self.full.describe()

    def initial_state(self):
        """The full graph's zero state."""
        return self.full.initial_state()

    def step(self, frame, state=None):
        """As the wrapped backends' ``step``."""
        if state is None or float(state[-1].max()) <= 0.5:
            if frame.dtype != np.uint8 or frame.shape != (*self.frame_hw, 3):
                return self.full.step(frame, state)  # the full graph raises the usual ValueError
            return self.plain.step(frame, None)
        return self.full.step(frame, state)


class FrozenDiTTA:
    """An adapted network frozen for serving, the one place a DiTTA network is frozen: the
    streaming model on a runtime backend per frame size, its state carried frame to frame,
    the fusion gates (motion gate, ``max_gap``: :mod:`ditta_ros.gates`) applied.
    :class:`~ditta_ros.ditta.DiTTAMethod` (evaluation, guard) and the live pipeline (node)
    both serve through it.

    Args:
        net: the adapted :class:`~ditta_ros.adapt.DiTTANet` (eval mode; not modified).
        config: the :class:`~ditta_ros.presets.DittaConfig` whose ``tau`` (Eq. 3 threshold;
            0: the plain branch only), ``fusion``, ``motion_gate`` and ``max_gap`` (seconds;
            frames farther apart are served by the plain branch; 0: off) it serves with.
        runtime: :class:`~.options.RuntimeOptions` (backend, precision, cache folders).
        trained_gap: seconds between the warm-up frames the add-on was trained on (``None``:
            unknown); with ``config.gap_factor`` it sets the largest gap that is fused.

    One thread steps it; a re-adaptation that refits this model's engine in place
    (``prepare(previous=this)``) exports first and holds :attr:`lock` only for the weight
    swap, so this model keeps serving meanwhile.
    """

    def __init__(self, net, config: DittaConfig, runtime: RuntimeOptions = RuntimeOptions(),
                 trained_gap: Optional[float] = None):
        self.net = net.eval()
        self.config, self.runtime, self.trained_gap = config, runtime, trained_gap
        self.tau = float(config.tau)
        self._warp: Optional[FlowWarp] = None
        self.backend = None
        self.frame_hw: Optional[Tuple[int, int]] = None
        self._gate: Optional[MotionGate] = None
        self._state = None
        self.stats = StreamStats()
        self.lock = threading.Lock()  # held while stepping, and by a refit of this model's engine

    @property
    def num_classes(self) -> int:
        """Classes of the label set."""
        return self.net.iss.num_classes

    def prepare(self, frame_hw, previous: Optional["FrozenDiTTA"] = None):
        """Build the backend (export, compile; refit ``previous``'s engine where the backend
        can, :func:`streaming_backend`) and the gate for frames of
        ``frame_hw``; a new stream starts. Returns the backend.

        Raises:
            RuntimeError / ValueError: no usable backend (as :func:`ditta_ros.runtime.select_backend`).
        """
        hw = (int(frame_hw[0]), int(frame_hw[1]))
        refit = previous is not None and previous.frame_hw == hw and hasattr(previous.backend, "swap_weights")
        self.backend = streaming_backend(self.net, hw, self.tau, self.runtime, fusion=self.config.fusion,
                                         flow_grid=self.config.flow_grid,
                                         refit=previous.backend if refit else None,
                                         refit_lock=previous.lock if refit else None)
        self._gate = MotionGate(StreamingDiTTA(self.net, hw, self.tau).window_reach()) \
            if self.config.motion_gate and self.tau > 0 else None
        self._warp = FlowWarp(max_residual=self.config.warp_residual) if self.config.warps and self.tau > 0 else None
        self.frame_hw, self._state = hw, None
        return self.backend

    def ready_for(self, frame_hw) -> bool:
        """True when the backend serves frames of ``frame_hw`` without re-preparing."""
        return self.backend is not None and self.frame_hw == tuple(frame_hw)

    @property
    def max_gap(self) -> float:
        """Seconds: frames farther apart are served by the plain branch (0: no limit;
        :meth:`~ditta_ros.presets.DittaConfig.fusion_limit` of :attr:`trained_gap`)."""
        return self.config.fusion_limit(self.trained_gap)

    def reset(self) -> None:
        """Start a new stream (the next frame uses no previous one) and new :attr:`stats`."""
        self._state = None
        self.stats = StreamStats()
        for g in (self._gate, self._warp):
            if g is not None:
                g.reset()

    def describe(self) -> str:
        """The backend's description (``"unprepared"`` before :meth:`prepare`)."""
        return self.backend.describe() if self.backend is not None else "unprepared"

    def warm(self, frame: np.ndarray, steps: int = 2) -> None:
        """Run ``steps`` inferences of ``frame`` (uint8 RGB ``[H, W, 3]``, the prepared size) and start
        a new stream (:meth:`reset`): a freshly compiled graph's first inferences are slower (OpenVINO
        bf16, 2-core EPYC: the first two 200-230 ms against 140-160 ms after), so whoever prepares the
        model pays them, not the first frames it serves. The outputs that follow are those of a model
        that never ran.

        Raises:
            as :meth:`step`.
        """
        for i in range(steps):
            self.step(frame, None if i == 0 else 0.0)
        if hasattr(self.backend, "warm_streams"):  # a pipeline: its streams' first inferences too
            self.backend.warm_streams(frame)
        self.reset()

    def start(self, frame: np.ndarray):
        """Start ``frame`` (uint8 RGB ``[H, W, 3]``) ahead of its :meth:`step` where the backend is a
        pipeline (:class:`~.openvino.PipelinedOpenVINO`, ``openvino_streams`` >= 2) prepared for its size: the
        stateless part runs meanwhile, so the caller may :meth:`step` the frame before it. Returns the token
        :meth:`step` takes as ``started``, or ``None`` (no pipeline, or not prepared for this size).

        Raises:
            ValueError: a bad frame.
        """
        backend = self.backend
        if not hasattr(backend, "start") or not self.ready_for(frame.shape[:2]):
            return None
        with self.lock:
            return backend, backend.start(frame)

    def step(self, frame: np.ndarray, interval: Optional[float] = None, started=None):
        """One uint8 RGB ``[H, W, 3]`` frame -> :class:`~ditta_ros.inference.Prediction`
        (prepares the backend first when the frame size is new; ``interval``: seconds since
        the previous frame, for ``max_gap``; ``None``: unknown; ``started``: this frame's :meth:`start`
        token, whose stateless part is then not run again; one from a backend no longer serving is ignored).

        Raises:
            RuntimeError: the backend was left unusable by a failed refit; ValueError: a bad frame.
        """
        if not self.ready_for(frame.shape[:2]):
            self.prepare(frame.shape[:2])
        state = self._state if self._warp is None else self._warp(frame, self._state)
        state = apply_gates(state, frame, self._gate, interval, self.max_gap)
        self.stats.add(interval, self.tau > 0 and state is not None and float(state[2].max()) > 0.5)
        with self.lock:
            unusable = getattr(self.backend, "unusable", None)
            if unusable:
                raise RuntimeError(f"the engine of this model is unusable ({unusable})")
            if started is not None and started[0] is self.backend:
                labels, conf, self._state = self.backend.finish(started[1], state)
            else:
                labels, conf, self._state = self.backend.step(frame, state)
        return Prediction.of(labels, conf, self.num_classes)


class ServedISS:
    """The pre-trained ISS model served through its plain graph (``tau = 0``, the add-on off): the
    same preprocessing (in-graph antialiased resize) and output path that DiTTA streams with,
    on a runtime backend per frame size (at most four sizes kept: a camera that changes size
    now and then). :meth:`prepare` may run in another thread than :meth:`predict`.

    Args:
        runner: the :class:`~ditta_ros.inference.ISSRunner` (its model).
        runtime: :class:`~.options.RuntimeOptions`.
    """

    def __init__(self, runner, runtime: RuntimeOptions = RuntimeOptions()):
        self.runner, self.runtime = runner, runtime
        self._ready = {}  # frame_hw -> backend

    def prepare(self, frame_hw) -> None:
        """Export (cached) and load the plain-ISS graph for frames of ``frame_hw``.

        Raises:
            RuntimeError: no usable backend (:func:`streaming_backend`).
        """
        from ..adapt import DiTTANet

        hw = (int(frame_hw[0]), int(frame_hw[1]))
        t0 = time.perf_counter()
        model = streaming_backend(DiTTANet(self.runner.model), hw, 0.0, self.runtime)
        log.info("ISS model on %s for %dx%d frames (ready in %.1f s)", model.describe(), hw[1], hw[0],
                 time.perf_counter() - t0)
        if len(self._ready) >= 4:
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
        graph for a new size first).

        Raises:
            ValueError: a bad frame.
        """
        hw = tuple(frame.shape[:2])
        model = self._ready.get(hw)
        if model is None:
            self.prepare(hw)
            model = self._ready[hw]
        labels, conf, _ = model.step(frame, None)
        return Prediction.of(labels, conf, self.runner.model.num_classes)
