"""One adaptation of the live pipeline, run in a worker thread (:func:`run_adaptation`): the
method (the same :class:`~ditta_ros.ditta.DiTTAMethod` as ``ditta eval --method ditta``) adapts
on the warm-up batch, then the adapted network is frozen for the serving runtime and prepared
for the frame size (refitting the engine of the model it replaces where the backend can). The
result is an :class:`Outcome` that the pipeline applies; nothing here touches the pipeline."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

import numpy as np

from ..ditta import AdaptationCancelled
from ..gates import beyond_limit
from ..runtime import FrozenDiTTA
from ..selector import INCUMBENT
from .config import LiveConfig
from .serving import Serving
from .warmup import WarmupBatch

log = logging.getLogger("ditta.live")


@dataclass
class Outcome:
    """What an adaptation ended with.

    Attributes:
        kind: ``adapted`` (``frozen`` serves next) | ``kept`` (a re-adaptation's selector judged the
            serving model best on the new warm-up: it keeps serving) | ``refused`` (by the guard or the
            selector; ``reasons``; ``incumbent_judged``: the serving model was among those refused) |
            ``skipped`` (nothing it could adapt would serve: :func:`futile`; ``reasons``) |
            ``cancelled`` (its stop event was set) | ``failed`` (``error``).
        info: what the method's ``adapt`` returned (seconds, target report, guard verdict).
        frozen: the adapted model, prepared for the warm-up frame size (``adapted`` only).
        meta: what its checkpoint records (``adapted`` only).
        t0: ``time.perf_counter()`` at the start (the status' ``total_seconds``).
        frames: warm-up frames adapted on.
    """

    kind: str
    info: Dict[str, object] = field(default_factory=dict)
    frozen: Optional[FrozenDiTTA] = None
    meta: Dict[str, object] = field(default_factory=dict)
    error: Optional[str] = None
    reasons: str = ""
    t0: float = 0.0
    frames: int = 0
    incumbent_judged: bool = False

    def summary(self, backend: str) -> Dict[str, object]:
        """The ``last_adaptation`` status entry: seconds, warm-up frames, backend, the
        label-free target report (changed share, objects) and the guard verdict."""
        report = self.info.get("target_report") or {}
        guard = self.info.get("guard") or {}
        return {"adapt_seconds": self.info.get("adapt_seconds"), "teacher_seconds": self.info.get("teacher_seconds"),
                "tta_seconds": self.info.get("tta_seconds"), "total_seconds": round(time.perf_counter() - self.t0, 3),
                "warmup_frames": self.frames, "backend": backend,
                "targets_changed": report.get("changed"), "objects_kept": report.get("objects_kept"),
                "objects_dropped": report.get("objects_dropped"),
                "selected": self.info["selection"]["chosen"] if self.info.get("selection") else None,
                "guard": ({k: guard.get(k) for k in ("refused", "changed", "lost_classes", "reasons")}
                          if guard else None)}


def run_adaptation(make_method: Callable[[], object], batch: WarmupBatch, cfg: LiveConfig, serving: Serving,
                   stop: threading.Event, running: Callable[[int], None], exporting: Callable[[], bool]) -> Outcome:
    """Build the method, adapt it on ``batch`` and freeze the result for ``serving``; nothing is
    built when adapting could not change a served label (:func:`futile`).

    Args:
        make_method: returns a :class:`~ditta_ros.ditta.DiTTAMethod` (or a stand-in with
            ``adapt(frames, iss_preds=None, incumbent=None)``, ``net``, ``refused``, ``stop``).
        batch: the warm-up frames, their served ISS predictions and stamps.
        cfg: the live configuration (recorded in the checkpoint metadata).
        serving: where the adapted model will serve (its runtime; the model it replaces).
        stop: set by a reset or a shutdown: the method raises at its next frame or step.
        running: called with +1 / -1 around the method's ``adapt`` (the status' ``adaptations_running``).
        exporting: called before the freeze; False when the adaptation is no longer wanted.

    Returns:
        the :class:`Outcome` (never raises).
    """
    t0 = time.perf_counter()
    n = len(batch.frames)
    gap = float(np.median(np.diff(batch.stamps))) if len(batch.stamps) > 1 else None
    try:
        if stop.is_set():
            raise AdaptationCancelled("adaptation cancelled")
        pointless = futile(serving.config, gap)
        if pointless:
            log.warning("adaptation skipped: %s", pointless)
            return Outcome("skipped", reasons=pointless, t0=t0, frames=n)
        log.info("adapting on %d warm-up frames (%dx%d)", n, batch.frames[0].shape[1], batch.frames[0].shape[0])
        method = make_method()
        method.stop = stop
        if gap is not None and hasattr(method, "frame_interval"):
            method.frame_interval = gap  # the guard and the candidates stream the warm-up at the gap it was taken
        kw = {} if batch.preds is None else {"iss_preds": batch.preds}
        serving_now = serving.adapted  # once: another thread may drop it (the interim is no adaptation)
        if serving_now is not None:
            kw["incumbent"] = serving_now.net  # a re-adaptation: a selecting method judges the serving model too
        running(1)
        try:
            info = method.adapt(batch.frames, **kw)
        finally:
            running(-1)
        if stop.is_set():
            raise AdaptationCancelled("adaptation cancelled")
        judged = INCUMBENT in ((info.get("selection") or {}).get("candidates") or {})
        if getattr(method, "refused", False):
            reasons = "; ".join(info.get("guard", {}).get("reasons", [])) or "guard"
            return Outcome("refused", info, reasons=reasons, t0=t0, frames=n, incumbent_judged=judged)
        if judged and info["selection"]["chosen"] == INCUMBENT:
            log.info("re-adaptation: the serving model is still the best on the new warm-up; it keeps serving")
            return Outcome("kept", info, reasons=info["selection"]["why"], t0=t0, frames=n)
        if not exporting():
            return Outcome("cancelled", info, t0=t0, frames=n)
        hw = tuple(batch.frames[0].shape[:2])
        frozen = _serving_model(method, serving, gap)
        if not frozen.ready_for(hw):  # the method's own model is ready and reset after its guard
            frozen.prepare(hw, previous=serving.adapted)
            frozen.warm(batch.frames[-1])  # its first, slower inferences here, not on the first served frames
        meta = {"model": cfg.model, "frame_hw": list(hw), "warmup_frames": n,
                "warmup_stamps": [round(s, 6) for s in batch.stamps], "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "tau": serving.config.tau, "preset": serving.config.preset, "fusion": frozen.config.fusion,
                "target_report": info.get("target_report"), "guard": info.get("guard"),
                "adapt_seconds": info.get("adapt_seconds"), "trained_gap": gap}
        log.info("adapted in %.1f s (teacher %.1f s); streaming on %s", time.perf_counter() - t0,
                 info.get("teacher_seconds") or 0.0, frozen.describe())
        return Outcome("adapted", info, frozen, meta, t0=t0, frames=n)
    except AdaptationCancelled:
        log.info("adaptation cancelled (reset or shutdown)")
        return Outcome("cancelled", t0=t0, frames=n)
    except Exception as exc:  # the node must survive a failed adaptation
        log.exception("adaptation failed: %s", exc)
        return Outcome("failed", error=f"{type(exc).__name__}: {exc}", t0=t0, frames=n)


def futile(config, gap: Optional[float]) -> Optional[str]:
    """Why adapting could not change a served label (``None``: it could): only the add-on would adapt
    (no candidates) and it never fuses, because ``tau`` is 0 or the frames are ``gap`` s apart,
    beyond ``max_gap`` (without ``gap_factor``). Then the teacher need not run."""
    if config.candidates or config.adapt.params != "addon":
        return None
    if config.tau <= 0:
        return "only the add-on would adapt and tau is 0 (the add-on never fuses); serving the ISS model"
    limit = config.fusion_limit(gap)
    if gap is not None and beyond_limit(gap, limit):
        return (f"only the add-on would adapt and it never fuses at this frame gap ({gap:.2f} s > max_gap "
                f"{limit:g} s); serving the ISS model")
    return None


def _serving_model(method, serving: Serving, trained_gap: Optional[float]) -> FrozenDiTTA:
    """The adapted network frozen for the serving runtime: the method's own frozen model when it
    already runs there (the guard's), else a new freeze. The guard runs the method's model on its
    runtime (torch) before anything may touch a serving engine: a refit of a TensorRT engine
    happens only after the guard accepted."""
    own = getattr(method, "frozen", None)
    if own is not None and getattr(method, "runtime", None) == serving.runtime:
        return own  # frozen with the method's frame_interval, set to the warm-up gap above
    return serving.freeze(method.net, trained_gap)
