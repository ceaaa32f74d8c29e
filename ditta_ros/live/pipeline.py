"""The live pipeline behind the ROS node, without ROS: frame in, :class:`Prediction` out,
adaptation in the background.

States (:class:`~.phases.Phase`)::

    WARMUP --(warm-up window full)--> ADAPTING --(adapted)--> EXPORTING --> STREAMING
       ^                                  |  (refused / failed)                 |
       +------------ readapt() -----------+----------> ISS <--- reset() --------+
    adapted_checkpoint: straight to STREAMING

* WARMUP: frames are collected (:class:`~.warmup.WarmupWindow`).
* ADAPTING / EXPORTING: the adaptation (:func:`~.adaptation.run_adaptation`) runs in a worker
  thread; meanwhile :meth:`LivePipeline.process` returns the ISS's labels (or the previous
  adaptation's), so the robot is never blind and never waits. With a flow fusion
  (``select``) and ``flow_while_adapting``, the first adaptation's wait is served by the ISS model
  fused with the previous frame moved by optical flow (``iss-flow``, prepared in the background):
  the least that ``select`` serves after it, with no training needed.
* STREAMING: the adapted model serves (:class:`~.serving.Serving`), saved to
  ``checkpoint_dir`` (:mod:`.checkpoints`); an ``adapted_checkpoint`` starts here directly.

During a re-adaptation (:meth:`LivePipeline.readapt`) the adapted model keeps serving until the
new one is ready. ``adapt=False`` keeps the pre-trained ISS model (also what :meth:`reset`
returns to). Which model made each label image is :attr:`LivePipeline.last_source`.
``auto_readapt`` starts a new warm-up on a sustained scene change (:class:`~.scene.SceneChangeDetector`);
``readapt_period`` every that many seconds of stream time after the last adaptation ended (also after
one that was refused or skipped, not after :meth:`reset`). A re-adaptation with a selecting preset
judges the serving model beside the new candidates: it keeps serving unless one is better
(:meth:`~ditta_ros.ditta.DiTTAMethod.select`).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from ..inference import ISSRunner, Prediction
from ..presets import FLOW_FUSIONS
from . import checkpoints
from .adaptation import Outcome, run_adaptation
from .config import LiveConfig, ParameterError
from .phases import Counters, Phase
from .scene import SceneChangeDetector
from .serving import Serving
from .warmup import WarmupBatch, WarmupWindow

log = logging.getLogger("ditta.live")


def release_heap() -> bool:
    """After an adaptation: collect garbage and give the freed heap back to the OS (glibc's
    ``malloc_trim``). The teacher and the candidates' training free gigabytes in their own thread's
    malloc arena, which glibc keeps; without this the node's resident memory stayed up to 0.6 GiB higher
    after each re-adaptation (``bench/results/soak_adapt.md``). True when ``malloc_trim`` ran (glibc only)."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        trim = getattr(libc, "malloc_trim", None)
    except OSError:
        trim = None
    if trim is None:  # not glibc (musl, macOS): nothing to do
        return False
    trim(0)
    return True


class LivePipeline:
    """Frame in, :class:`Prediction` out, adaptation in the background (module docstring).

    Args:
        cfg: :class:`~.config.LiveConfig`.
        runner: the ISS runner (built from ``cfg.model`` when ``None``).
        method_factory: ``runner -> DiTTAMethod`` (default: :meth:`make_method`, the same
            construction as ``ditta eval --method ditta``); tests inject a cheaper one.

    Raises:
        ParameterError: a preset, model, teacher or adapted checkpoint that cannot be used (at
            construction, so a node fails at start-up and not after its warm-up).

    Thread safety: :meth:`process` is called from one thread (the inference loop);
    adaptation and re-preparation for a new frame size run in their own; :meth:`readapt`,
    :meth:`reset`, :meth:`save` and :meth:`close` may come from any thread. At most one
    adaptation runs at a time: a reset stops the one in flight (``stop`` event), and the
    next one starts only once it has ended.
    """

    def __init__(self, cfg: LiveConfig, runner: Optional[ISSRunner] = None,
                 method_factory: Optional[Callable[[ISSRunner], object]] = None):
        self.cfg = cfg
        self.config, self.runtime = cfg.resolved()  # a bad preset or runtime fails here
        if cfg.torch_threads > 0:
            import torch

            torch.set_num_threads(cfg.torch_threads)
        self.info = None
        if runner is None:
            runner = self._load_runner()
        self.runner = runner
        self._teacher = None
        if method_factory is None and cfg.adapt:
            self._teacher = self._make_teacher()  # weights resolved now: a missing file fails at start-up
        self.method_factory = method_factory or self.make_method
        self.serving = Serving(runner, self.config, self.runtime, cfg.iss_backend, cfg.wait_for_backend)
        self.window = WarmupWindow(cfg.warmup_frames, cfg.warmup_seconds, cfg.frame_stride)
        self.counters = Counters()
        self.phase = Phase.WARMUP if cfg.adapt else Phase.ISS
        self.progress = 0.0
        self.last_adapt: Dict[str, object] = {}
        self.last_source: Optional[str] = None
        self.checkpoint: Optional[str] = None  # the last adaptation saved
        self.error: Optional[str] = None
        self.warning: Optional[str] = None
        self._lock = threading.Lock()
        self._worker: Optional[threading.Thread] = None
        self._stop: Optional[threading.Event] = None  # the adaptation in flight's
        self._running = 0  # adaptations inside method.adapt (status: adaptations_running)
        self._generation = 0
        self._period_start: Optional[float] = None  # stream time the readapt_period counts from
        self._period_armed = False  # an adaptation ended (not a reset): the period may start a new one
        self._save_lock = threading.Lock()
        self._interim: Optional[Tuple[int, Optional[float]]] = None  # (generation, warm-up gap) still to start
        self.scene = SceneChangeDetector(runner.model.num_classes, cfg.scene_change_threshold,
                                         cfg.scene_change_frames)
        if cfg.adapted_checkpoint:
            frozen, meta, path = checkpoints.load_for_serving(cfg, self.serving)
            self.serving.install(frozen, meta)
            self.checkpoint = path
            self.last_adapt = {"checkpoint": path, "backend": frozen.describe(),
                               **{k: meta.get(k) for k in ("created", "frame_hw", "warmup_frames")}}
            self.phase, self.progress = Phase.STREAMING, 1.0
            self._period_armed = True  # a saved adaptation ended too: readapt_period counts from here

    # -- construction of the adaptation, the same as the CLI's ---------------------
    def _load_runner(self) -> ISSRunner:
        from ..iss import load_model

        try:
            model, self.info = load_model(self.cfg.model)
        except Exception as exc:
            raise ParameterError("model", self.cfg.model, f"a loadable model ({type(exc).__name__}: {exc})") from exc
        return ISSRunner(model, self.cfg.device)

    def _make_teacher(self):
        from ..teacher import make_teacher

        try:
            return make_teacher(self.cfg.teacher, self.cfg.teacher_checkpoint or None,
                                self.cfg.teacher_config or None, device=self.cfg.device)
        except Exception as exc:
            name = "teacher_checkpoint" if self.cfg.teacher_checkpoint else "teacher"
            raise ParameterError(name, getattr(self.cfg, name),
                                 f"a teacher whose weights can be found ({type(exc).__name__}: {exc})") from exc

    def make_method(self, runner: ISSRunner):
        """The DiTTA method of this configuration: :attr:`config` (the preset with the node's
        overrides) and the serving runtime's device on torch for the guard (the adapted model is
        then frozen for the serving runtime, :func:`~.adaptation.run_adaptation`)."""
        from ..ditta import DiTTAMethod

        if self._teacher is None:
            self._teacher = self._make_teacher()
        guard_runtime = self.runtime.replace(backend="torch", fp16=False)  # the guard judges the fp32 weights
        return DiTTAMethod(runner, self._teacher, self.config, guard_runtime, progress=False)

    # -- saved adaptations -------------------------------------------------------------
    def save(self, path: Optional[str] = None) -> str:
        """Save the adaptation being served (:func:`~.checkpoints.save_served`). Returns the path.

        Raises:
            RuntimeError: no adapted model is being served, or no ``checkpoint_dir`` and no ``path``;
            OSError: the file cannot be written.
        """
        frozen, meta = self.serving.current()
        if frozen is None:
            raise RuntimeError("no adapted model to save (state %s)" % self.phase.value)
        with self._save_lock:
            path = checkpoints.save_served(frozen, meta, self.cfg, path)
        self.checkpoint = path
        return path

    # -- control ---------------------------------------------------------------------
    def readapt(self) -> str:
        """Start a new warm-up window; the adapted model being served (if any) keeps serving
        until the new one is ready."""
        with self._lock:
            if self.phase in (Phase.ADAPTING, Phase.EXPORTING):
                return f"busy: {self.phase.value}"
            self._generation += 1
            self.window.clear()
            self.phase, self.progress, self.error = Phase.WARMUP, 0.0, None
            self._period_armed, self._period_start = False, None
        self.serving.reset()
        log.info("re-adaptation requested: collecting a new warm-up window%s",
                 " (the adapted model keeps serving)" if self.serving.adapted is not None else "")
        return "warm-up started"

    def reset(self) -> str:
        """Back to the pre-trained ISS model; an adaptation in flight is stopped and discarded."""
        with self._lock:
            self._generation += 1
            if self._stop is not None:
                self._stop.set()
            self.window.clear()
            self.serving.install(None)
            self._interim = None
            self.phase, self.progress = Phase.ISS, 0.0
            self._period_armed, self._period_start = False, None
            self.error, self.warning = None, None
        self.serving.reset()
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
            self._interim = None
            self.serving.end_interim()
        deadline = time.monotonic() + timeout
        if self._worker is not None:
            self._worker.join(max(0.0, deadline - time.monotonic()))
        prepared = self.serving.join(max(0.0, deadline - time.monotonic()))
        return prepared and (self._worker is None or not self._worker.is_alive())

    def wait_idle(self, timeout: float = None) -> None:
        """Join the adaptation and preparation workers (tests, shutdown)."""
        if self._worker is not None:
            self._worker.join(timeout)
        self.serving.join(timeout)

    def adaptations_running(self) -> int:
        """How many adaptations are inside the method right now (0 or 1)."""
        return self._running

    # -- per frame -------------------------------------------------------------------
    def start(self, frame: np.ndarray):
        """Start ``frame`` ahead of its :meth:`process` where the serving model runs as a pipeline
        (``openvino_streams`` >= 2: :meth:`Serving.start`), so that the frame loop overlaps it with the frame
        before. Returns the token :meth:`process` takes as ``started``, or ``None`` (nothing to overlap: no
        pipeline, the ISS serves, a bad frame, whose error :meth:`process` reports)."""
        with self._lock:
            phase = self.phase
        if phase == Phase.ISS:
            return None
        try:
            return self.serving.start(frame)
        except Exception as exc:  # served without overlap by process(), which reports a bad frame
            log.debug("frame not started ahead: %s", exc)
            return None

    def process(self, frame: np.ndarray, stamp: float = None, started=None) -> Tuple[Prediction, Phase]:
        """One RGB uint8 ``[H, W, 3]`` frame -> its prediction and the phase that made it
        (:attr:`last_source` says which model: :data:`~.phases.SOURCES`; ``started``: the frame's
        :meth:`start` token).

        Raises:
            ValueError: not a uint8 ``[H, W, 3]`` array, or a non-finite output of the ISS model.
        """
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"expected a uint8 [H, W, 3] RGB frame, got {getattr(frame, 'shape', None)} "
                             f"{getattr(frame, 'dtype', type(frame))}")
        stamp = time.monotonic() if stamp is None else float(stamp)
        with self._lock:
            phase, gen = self.phase, self._generation
        # STREAMING, or a re-adaptation under way: the adapted model serves where it can
        pred, source = self.serving.answer(frame, stamp, adapted=phase != Phase.ISS, started=started)
        if self.serving.dropped is not None:
            self._adapted_dropped()
        if phase == Phase.WARMUP:
            with self._lock:
                if self.phase == Phase.WARMUP and gen == self._generation:
                    batch = self.window.add(frame, stamp, pred if source == "iss" else None)
                    self.progress = self.window.progress
                    if batch is not None:
                        self._start_adaptation(batch)
        elif phase == Phase.ADAPTING:
            pending = self._interim  # one read: the worker clears it when the adaptation ends
            if pending is not None:
                self._start_interim(pending, frame)
        self.last_source = source
        self.counters.by_model[source] += 1
        self._periodic(phase, stamp)
        if phase == Phase.STREAMING and source == "adapted" and self.cfg.auto_readapt \
                and self.scene.update(pred.labels):
            log.warning("scene change: class histogram moved %.2f (TV distance) from the adapted scene for %d "
                        "frames; re-adapting", self.scene.distance, self.cfg.scene_change_frames)
            self.readapt()
        return pred, phase

    def _periodic(self, phase: Phase, stamp: float) -> None:
        """Start a re-adaptation once ``readapt_period`` s of stream time passed since the first frame
        served after the last adaptation ended."""
        if self.cfg.readapt_period <= 0 or not self._period_armed or phase not in (Phase.STREAMING, Phase.ISS):
            return
        if self._period_start is None:
            self._period_start = stamp
        elif stamp - self._period_start >= self.cfg.readapt_period:
            log.info("re-adapting: %.0f s of stream time since the last adaptation (readapt_period)",
                     stamp - self._period_start)
            self.readapt()

    def _adapted_dropped(self) -> None:
        """The adapted model failed too often and was dropped: the ISS serves."""
        with self._lock:
            self.warning, self.serving.dropped = self.serving.dropped, None
            if self.phase == Phase.STREAMING:
                self.phase = Phase.ISS

    # -- the interim: the ISS with the flow branch while the first adaptation runs -------------
    def _start_interim(self, pending: Tuple[int, Optional[float]], frame: np.ndarray) -> None:
        """Start preparing the interim (``pending``: the generation of the adaptation it stands in for
        and the warm-up's frame gap) for frames of ``frame``'s size, one try per frame until a preparation
        slot is free; it is installed only if that adaptation still runs once it is ready."""
        gen, gap = pending

        def install_if_wanted(frozen) -> bool:
            with self._lock:
                if gen != self._generation or self.phase != Phase.ADAPTING or self.serving.frozen is not None:
                    return False
                if frozen is not None:
                    self.serving.install(frozen, {"interim": True}, interim=True)
                return True

        if self.serving.start_interim(frame, gap, install_if_wanted):
            with self._lock:
                if self._interim is pending:
                    self._interim = None

    # -- the adaptation worker ----------------------------------------------------------
    def _start_adaptation(self, batch: WarmupBatch) -> None:
        """Hand a full warm-up window to a new worker (called under the lock); with no adapted model
        serving, a flow fusion and ``flow_while_adapting``, the interim is prepared from the next frame on."""
        self.phase, self.progress, self._interim = Phase.ADAPTING, 0.0, None
        if self.cfg.flow_while_adapting and self.cfg.iss_backend and self.config.fusion in FLOW_FUSIONS \
                and self.config.tau > 0 and self.serving.adapted is None:
            stamps = batch.stamps
            self._interim = (self._generation, float(np.median(np.diff(stamps))) if len(stamps) > 1 else None)
        stop, previous = threading.Event(), self._worker
        self._stop = stop
        self._worker = threading.Thread(target=self._adapt, args=(batch, self._generation, stop, previous),
                                        name="ditta-adapt", daemon=True)
        self._worker.start()

    def _adapt(self, batch: WarmupBatch, gen: int, stop: threading.Event,
               previous: Optional[threading.Thread]) -> None:
        if previous is not None:
            previous.join()  # a stopped adaptation ends at its next step: never two at once

        def running(delta: int) -> None:
            with self._lock:
                self._running += delta

        def exporting() -> bool:
            with self._lock:
                if gen != self._generation:
                    return False
                self.phase, self._interim = Phase.EXPORTING, None  # an interim not ready by now is not wanted
                return True

        # a reset while waiting for the previous one builds nothing (run_adaptation checks `stop` first)
        outcome = run_adaptation(lambda: self.method_factory(self.runner), batch, self.cfg, self.serving, stop,
                                 running, exporting)
        self._apply(outcome, gen)
        del outcome
        release_heap()

    def _apply(self, outcome: Outcome, gen: int) -> None:
        """Serve what an adaptation ended with, unless a reset or readapt came meanwhile."""
        with self._lock:
            if gen != self._generation or outcome.kind == "cancelled":
                return
            self._period_armed, self._period_start = True, None
            self._interim = None
            serving_adapted = self.serving.adapted is not None
            if outcome.kind != "adapted":  # the interim only stands in for an adaptation (an adapted one replaces it)
                self.serving.end_interim()
            if outcome.kind == "failed":
                self.error = outcome.error
                self.phase = Phase.STREAMING if serving_adapted else Phase.ISS
                return
            if outcome.kind == "skipped":
                self.last_adapt = outcome.summary("previous adaptation" if serving_adapted else "iss (skipped)")
                self.warning = f"adaptation skipped: {outcome.reasons}"
                self.phase, self.progress = (Phase.STREAMING if serving_adapted else Phase.ISS), 1.0
                return
            if outcome.kind == "kept":
                if serving_adapted:
                    self.last_adapt = outcome.summary("previous adaptation (kept: still the best on the new warm-up)")
                    self.warning, self.phase = None, Phase.STREAMING
                else:  # it was dropped (failures) while the re-adaptation ran: the ISS serves
                    self.last_adapt = outcome.summary("iss (the kept adaptation was dropped meanwhile)")
                    self.phase = Phase.ISS
                self.progress = 1.0
                self.scene.reset()
                return
            if outcome.kind == "refused":
                if serving_adapted and not outcome.incumbent_judged:  # a re-adaptation: the previous one stays
                    self.last_adapt = outcome.summary("previous adaptation (re-adaptation refused)")
                    self.warning = (f"re-adaptation refused by the do-no-harm guard ({outcome.reasons}); the "
                                    "previous adaptation keeps serving")
                    self.phase = Phase.STREAMING
                else:  # a first adaptation, or a serving model the selector no longer admits
                    self.last_adapt = outcome.summary("iss (adaptation refused)")
                    self.warning = (f"re-adaptation: no candidate admissible, the serving model included "
                                    f"({outcome.reasons}); serving the ISS model") if serving_adapted else \
                        f"adaptation refused by the do-no-harm guard ({outcome.reasons}); serving the ISS model"
                    if serving_adapted:  # the selector judged the serving model too and refused it
                        self.checkpoint = None
                    self.serving.install(None)
                    self.phase = Phase.ISS
                self.progress = 1.0
                log.warning("%s", self.warning)
                return
            self.serving.install(outcome.frozen, outcome.meta)
            self.last_adapt = outcome.summary(outcome.frozen.describe())
            self.warning = self.error = self.serving.error = None
            self.phase, self.progress = Phase.STREAMING, 1.0
            self.scene.reset()
        if self.cfg.checkpoint_dir:
            try:
                self.save()
            except Exception as exc:  # serving goes on without the file
                log.warning("could not save the adaptation: %s", exc)

    def status(self) -> Dict[str, object]:
        """JSON-ready status: phase, warm-up/adaptation progress, counters, which model made
        the last label image (and what ran the ISS model last: ``iss_runtime``), adaptations running,
        what is being prepared, the last saved
        checkpoint, the last adaptation, the standing error and warning, the processed-frame gap and
        the share of the adapted model's frames fused with the temporal branch (add-on or flow) (:meth:`Serving.stream_status`)."""
        return {"state": self.phase.value, "progress": round(self.progress, 3), **asdict(self.counters),
                "model": self.last_source, "iss_runtime": self.serving.iss_runtime,
                "adaptations_running": self._running, "preparing": self.serving.preparing,
                "checkpoint": self.checkpoint, "last_adaptation": self.last_adapt,
                "error": self.error or self.serving.error, "warning": self.warning, **self.serving.stream_status()}
