"""Which model answers a frame in the live pipeline (:class:`Serving`):

* the adapted model (:class:`~ditta_ros.runtime.FrozenDiTTA`) when there is one and it is
  prepared for the frame's size; a new size is prepared in the background while the ISS
  serves; a failure on a frame (a non-finite output, a runtime error) makes the ISS serve that
  frame (``fallback``), and after :data:`NONFINITE_LIMIT` in a row the adapted model is dropped;
* while the first adaptation runs, the pre-trained model with the flow branch (``interim``:
  :meth:`Serving.start_interim`, source ``iss-flow``): no training is needed to fuse a frame with the
  previous one moved by optical flow, which is the least that the ``select`` preset serves after it;
  prepared in the background while the ISS serves;
* else the pre-trained ISS model on the serving backend (:class:`~ditta_ros.runtime.ServedISS`,
  its plain graph exported once per model and frame size), or torch's frame-wise runner while
  that graph is prepared in the background, the first frame size included: a camera's first
  frames are answered at once, not after the export and compile (``wait_for_backend``: the first
  size is prepared before the first label, so an evaluation scores the serving graph's labels
  only; ``iss_backend: false``: always torch). :attr:`Serving.iss_runtime` says which answered.

One thread calls :meth:`Serving.answer` (the inference loop); :meth:`install`, :meth:`drop`
and :meth:`reset` may come from others. At most one background preparation runs at a time;
one that failed is not retried until :meth:`reset`.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from ..inference import ISSRunner, Prediction
from ..presets import FLOW_FUSIONS, DittaConfig
from ..runtime import FrozenDiTTA, RuntimeOptions, ServedISS
from ..runtime.serving import StreamStats
from .phases import ISS_FLOW, ema

log = logging.getLogger("ditta.live")

#: consecutive failures of the adapted model after which it is dropped (ISS serves)
NONFINITE_LIMIT = 10


class Serving:
    """The models of the live pipeline and the choice between them (module docstring).

    Args:
        runner: torch's frame-wise ISS runner (the pre-trained model).
        config: the DiTTA configuration the adapted models are frozen with.
        runtime: the serving runtime.
        iss_backend: serve the pre-trained model on ``runtime`` too (else torch's runner).
        wait_for_backend: prepare the first frame size's graph before the first label (else torch's
            runner answers while it is prepared in the background).

    Attributes:
        frozen: the model being served instead of the ISS (``None``: none); meta: what its checkpoint
            records; interim: ``frozen`` is the pre-trained model with the flow branch, standing in
            while the first adaptation runs (not an adaptation: :attr:`adapted` is ``None``, nothing is saved).
        preparing: what the background thread prepares (``None``: nothing).
        error: the last failed preparation (``None`` after :meth:`reset`).
        dropped: why the adapted model was last dropped (``None``: it was not).
        iss_runtime: what answered the last ISS label: ``"backend"`` (the serving graph) or ``"torch"``
            (the frame-wise runner: ``iss_backend`` off, or the graph being prepared); ``None`` before one.
    """

    def __init__(self, runner: ISSRunner, config: DittaConfig, runtime: RuntimeOptions, iss_backend: bool = True,
                 wait_for_backend: bool = False):
        self.runner, self.config, self.runtime, self.iss_backend = runner, config, runtime, iss_backend
        self.wait_for_backend = wait_for_backend
        self.iss_runtime: Optional[str] = None
        self.frozen: Optional[FrozenDiTTA] = None
        self.meta: Dict[str, object] = {}
        self.interim = False
        self.preparing: Optional[str] = None
        self.error: Optional[str] = None
        self.dropped: Optional[str] = None
        self.iss: Optional[ServedISS] = None  # the pre-trained model on the serving runtime
        self._lock = threading.Lock()
        self._failed = set()  # preparations that failed: not retried until reset()
        self._thread: Optional[threading.Thread] = None
        self._nonfinite = 0
        self._last_stamp: Optional[float] = None  # stamp of the last frame the adapted model streamed
        self._served_any = False
        self._prev_stamp: Optional[float] = None
        self.frame_gap_s: Optional[float] = None

    def freeze(self, net, trained_gap: Optional[float] = None, fusion: Optional[str] = None) -> FrozenDiTTA:
        """``net`` frozen for serving with this configuration and runtime (``trained_gap``: seconds
        between the warm-up frames it was adapted on; ``fusion``: the temporal branch it was adapted
        for, when not this configuration's: a saved adaptation's)."""
        config = self.config if fusion in (None, self.config.fusion) else dataclasses.replace(
            self.config, fusion=fusion, flow_grid=self.config.flow_grid if fusion in FLOW_FUSIONS else "addon")
        return FrozenDiTTA(net, config, self.runtime, trained_gap)

    # -- the served adapted model ----------------------------------------------------------
    def install(self, frozen: Optional[FrozenDiTTA], meta: Optional[Dict[str, object]] = None,
                interim: bool = False) -> None:
        """Serve ``frozen`` (``None``: the ISS) from the next frame on; ``interim``: it is the
        pre-trained model with the flow branch (:meth:`start_interim`), not an adaptation."""
        with self._lock:
            self.frozen, self.meta, self._nonfinite = frozen, dict(meta or {}), 0
            self.interim = frozen is not None and interim

    @property
    def adapted(self) -> Optional[FrozenDiTTA]:
        """The adapted model being served (``None``: the ISS or the interim serves)."""
        with self._lock:  # one snapshot of (frozen, interim): install() sets both
            return None if self.interim else self.frozen

    def current(self) -> Tuple[Optional[FrozenDiTTA], Dict[str, object]]:
        """``(adapted model, meta)`` as one snapshot (``(None, {})`` while the ISS or the interim serves)."""
        with self._lock:
            return (None, {}) if self.interim else (self.frozen, dict(self.meta))

    def end_interim(self) -> None:
        """Stop serving the interim (when it serves; the ISS answers next) and forget its failed
        preparation's error: it stood in for an adaptation that has ended."""
        with self._lock:
            if self.interim:
                self.frozen, self.meta, self.interim = None, {}, False
            if (self.error or "").startswith(f"preparing {ISS_FLOW} "):
                self.error = None

    def start_interim(self, frame: np.ndarray, trained_gap: Optional[float],
                      install_if_wanted: Callable[[FrozenDiTTA], bool]) -> bool:
        """Prepare the pre-trained model with this configuration's flow branch for frames of ``frame``'s
        size in the background (warmed on ``frame``: :meth:`FrozenDiTTA.warm`); once ready,
        ``install_if_wanted(frozen)`` installs it as the interim (:attr:`interim`)
        when the adaptation it stands in for still runs, and says whether it did (``install_if_wanted(None)``
        only says whether it is still wanted: asked before the export starts).

        Returns:
            True when the preparation was started (False: another preparation runs, or this one failed
            before).
        """
        import copy

        from ..adapt import DiTTANet

        def job():
            if not install_if_wanted(None):  # the adaptation ended while this waited for the slot
                return
            net = DiTTANet(copy.deepcopy(self.runner.model), grid_stride=self.config.addon_stride).eval()
            fresh = self.freeze(net, trained_gap)
            fresh.prepare(hw)
            fresh.warm(frame)
            if install_if_wanted(fresh):
                log.info("serving the ISS model with the flow branch on %s while the adaptation runs",
                         fresh.describe())

        hw = tuple(frame.shape[:2])
        what = f"{ISS_FLOW} {hw[1]}x{hw[0]}"
        if not self._slot_free(what):
            return False
        frame = frame.copy()  # the job runs after the caller has moved on
        return self._in_background(what, job)

    def reset(self) -> None:
        """Forget failed preparations and their error (a reset or a new warm-up)."""
        with self._lock:
            self._failed, self.error, self.dropped = set(), None, None

    # -- per frame --------------------------------------------------------------------------
    def start(self, frame: np.ndarray):
        """Start ``frame`` on the installed model's pipeline ahead of its :meth:`answer`
        (:meth:`FrozenDiTTA.start`): the token :meth:`answer` takes as ``started``, or ``None``.

        Raises:
            ValueError: a bad frame.
        """
        with self._lock:
            frozen = self.frozen
        return None if frozen is None else frozen.start(frame)

    def answer(self, frame: np.ndarray, stamp: float, adapted: bool = True, started=None) -> Tuple[Prediction, str]:
        """The prediction of one uint8 RGB ``[H, W, 3]`` frame and its source (``iss`` |
        ``adapted`` | ``fallback`` | ``iss-flow``: :data:`~.phases.SOURCES`); ``adapted=False`` serves the
        ISS whatever is installed; ``started``: the frame's :meth:`start` token.

        Raises:
            ValueError: a non-finite output of the ISS model.
        """
        with self._lock:
            frozen, interim = self.frozen, self.interim
        pred, source = None, "iss"
        if frozen is not None and adapted:
            pred, source = self._adapted(frozen, interim, frame, stamp, started)
        if pred is None:
            pred = self._iss(frame)
            if not np.isfinite(pred.confidence).all():
                raise ValueError("non-finite confidence in the model output")
        self._served_any = True
        if self._prev_stamp is not None and stamp > self._prev_stamp:
            self.frame_gap_s = ema(self.frame_gap_s, stamp - self._prev_stamp)
        self._prev_stamp = stamp
        return pred, source

    def stream_status(self) -> Dict[str, object]:
        """``frame_gap_ms``: the processed-frame gap (moving average, weight 0.1, of the stamp
        differences of the frames answered, ms); ``fused_share``, ``streamed_frames``: of the adapted
        model serving now, the share of its frames fused with the temporal branch (add-on or flow;
        ``None``: no adapted model)."""
        frozen = self.frozen
        stats = (frozen.stats if frozen is not None else StreamStats()).as_dict()
        return {"frame_gap_ms": None if self.frame_gap_s is None else round(1000 * self.frame_gap_s, 1),
                "fused_share": stats["fused_share"], "streamed_frames": stats["streamed_frames"]}

    def _adapted(self, frozen: FrozenDiTTA, interim: bool, frame: np.ndarray,
                 stamp: float, started=None) -> Tuple[Optional[Prediction], str]:
        """The adapted model (or the ``interim``) on one frame; no prediction when it cannot serve this
        frame: a new frame size (``"iss"``: prepared in the background meanwhile) or a failure (``"fallback"``)."""
        hw = tuple(frame.shape[:2])
        if not frozen.ready_for(hw):
            self._prepare_adapted(frozen, frame, interim)
            return None, "iss"
        interval = None if self._last_stamp is None else stamp - self._last_stamp
        self._last_stamp = stamp
        try:
            pred = frozen.step(frame, interval, started)
            problem = None if np.isfinite(pred.confidence).all() else "a non-finite output"
        except Exception as exc:  # a runtime failure must not take every frame down with it
            problem = f"an error ({type(exc).__name__}: {exc})"
        if problem is None:
            self._nonfinite = 0
            return pred, ISS_FLOW if interim else "adapted"
        self._nonfinite += 1
        what = "the ISS model with the flow branch" if interim else "the adapted model"
        if self._nonfinite == 1 or self._nonfinite % 100 == 0:
            log.warning("%s gave %s (%d in a row): serving the ISS model for this frame", what, problem,
                        self._nonfinite)
        if self._nonfinite >= NONFINITE_LIMIT:
            with self._lock:
                if self.frozen is frozen:
                    self.frozen, self.meta, self.interim = None, {}, False
                    self.dropped = (f"{what} failed on {NONFINITE_LIMIT} frames in a row (last: {problem}); serving "
                                    "the ISS model" + ("" if interim else " (readapt to try again)"))
                    log.warning("%s", self.dropped)
        return None, "fallback"

    def _iss(self, frame: np.ndarray) -> Prediction:
        """The pre-trained model on one frame: on the serving backend where its graph is ready for
        the frame size, else torch's frame-wise runner while the graph is prepared in the background.
        With ``wait_for_backend``, the first frame size is prepared before the first label instead (every
        label then comes from the serving model, as ``ditta eval --method iss-stream`` computes it)."""
        if not self.iss_backend:
            return self._torch(frame)
        if self.iss is None:
            self.iss = ServedISS(self.runner, self.runtime)
        hw = tuple(frame.shape[:2])
        if self.iss.ready_for(hw):
            self.iss_runtime = "backend"
            return self.iss.predict(frame)
        what = f"iss {hw[1]}x{hw[0]}"
        starting = not self.iss.prepared and self.frozen is None and not self._served_any
        if self.wait_for_backend and starting and what not in self._failed:
            try:
                pred = self.iss.predict(frame)
                self.iss_runtime = "backend"
                return pred
            except Exception as exc:
                self._failure(what, exc)
                return self._torch(frame)
        iss = self.iss
        if self._in_background(what, lambda: iss.prepare(hw)) and starting:
            log.info("serving the ISS model on torch while its %s graph is prepared for %dx%d frames",
                     self.runtime.backend, hw[1], hw[0])
        return self._torch(frame)

    def _torch(self, frame: np.ndarray) -> Prediction:
        self.iss_runtime = "torch"
        return self.runner.predict(frame)

    # -- background preparation ------------------------------------------------------------
    def _prepare_adapted(self, frozen: FrozenDiTTA, frame: np.ndarray, interim: bool = False) -> None:
        """Prepare the adapted model (or the ``interim``) for a new frame size (``frame``'s, warmed on a
        copy of it) in the background (an export and, with TensorRT, an engine build take long); the ISS
        serves meanwhile."""
        hw = tuple(frame.shape[:2])
        what = ISS_FLOW if interim else "adapted"
        if not self._slot_free(f"{what} {hw[1]}x{hw[0]}"):  # called every frame until the slot is free
            return
        frame = frame.copy()  # the job runs after the caller has moved on

        def job():
            fresh = self.freeze(frozen.net, frozen.trained_gap, frozen.config.fusion)  # a saved adaptation's own
            fresh.prepare(hw)
            fresh.warm(frame)
            with self._lock:
                if self.frozen is frozen:
                    self.frozen = fresh
                    self.meta = dict(self.meta, frame_hw=list(hw))
            log.info("%s model ready for %dx%d frames on %s", what, hw[1], hw[0], fresh.describe())

        if self._in_background(f"{what} {hw[1]}x{hw[0]}", job):
            log.warning("frame size changed %s -> %s: serving the ISS model while the %s model is prepared for "
                        "the new size", frozen.frame_hw, hw, what)

    def _slot_free(self, what: str) -> bool:
        """True when :meth:`_in_background` would start ``what`` now: no preparation runs and
        ``what`` did not fail before."""
        return what not in self._failed and (self._thread is None or not self._thread.is_alive())

    def _in_background(self, what: str, job: Callable[[], None]) -> bool:
        """Run ``job`` in the preparation thread unless one runs or ``what`` failed before.
        True when it was started."""
        if not self._slot_free(what):
            return False

        def work():
            try:
                job()
            except Exception as exc:
                self._failure(what, exc)
            finally:
                self.preparing = None

        self.preparing = what
        self._thread = threading.Thread(target=work, name="ditta-prepare", daemon=True)
        self._thread.start()
        return True

    def _failure(self, what: str, exc: Exception) -> None:
        log.error("could not prepare %s: %s", what, exc, exc_info=exc)
        with self._lock:
            self._failed.add(what)
            self.error = f"preparing {what}: {type(exc).__name__}: {exc}"

    def join(self, timeout: Optional[float] = None) -> bool:
        """Wait up to ``timeout`` s for the preparation thread; True when none is running."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self._thread is None or not self._thread.is_alive()
