"""Diagnostics without ROS: the level of each status period (:class:`Health`) and the core's
log records forwarded to the node's logger (:class:`LogForwarder`, so they reach ``/rosout``)."""

from __future__ import annotations

import logging
import time
from typing import Dict, Optional, Tuple


class Health:
    """Diagnostics level recomputed every period from what happened in that period, so a
    problem clears once things are fine again (levels as ``diagnostic_msgs``: 0 OK, 1 WARN,
    2 ERROR).

    * ERROR: images arrived in the period, none was published and some were bad; or no
      image for ``stale_seconds`` after images had arrived (stale input).
    * WARN: images arrived but none was published (a stalled loop) and none was bad; bad messages in
      the period; the adapted model fell back to the ISS; no image yet after ``stale_seconds``;
      fewer than ``min_fps`` label images per second in the period while images arrive;
      paused; a standing warning (guard refusal, ...) or error (a failed adaptation).
    * Images left unprocessed because nobody subscribes (``idle``) count as neither in nor out.

    Times are ``time.monotonic`` seconds (the loop's ``last_in``), so ``use_sim_time`` does not
    change them.
    """

    OK, WARN, ERROR = 0, 1, 2

    def __init__(self, stale_seconds: float = 5.0, min_fps: float = 0.0):
        self.stale_seconds, self.min_fps = float(stale_seconds), float(min_fps)
        self._prev: Optional[Dict[str, object]] = None
        self._started = time.monotonic()

    def update(self, status: Dict[str, object], last_in: Optional[float], now: Optional[float] = None
               ) -> Tuple[int, str]:
        """``(level, message)`` for this period from the loop's status and the (steady-clock) time of
        the last image."""
        now = time.monotonic() if now is None else now
        prev = self._prev or {"frames_in": 0, "frames_out": 0, "bad": 0, "idle": 0, "by_model": {"fallback": 0},
                              "time": self._started}
        self._prev = {"frames_in": status["frames_in"], "frames_out": status["frames_out"], "bad": status["bad"],
                      "idle": status.get("idle", 0), "by_model": dict(status["by_model"]), "time": now}
        d_idle = status.get("idle", 0) - prev["idle"]
        # a frame counted in on arrival may be counted idle only in the next period: never below 0
        d_in = max(0, status["frames_in"] - prev["frames_in"] - d_idle)
        d_out = status["frames_out"] - prev["frames_out"]
        d_bad = status["bad"] - prev["bad"]
        d_fallback = status["by_model"]["fallback"] - prev["by_model"]["fallback"]
        rate = d_out / max(1e-6, now - prev["time"])
        errors, warns = [], []
        if d_in > 0 and d_out == 0 and d_idle == 0:
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
        if d_idle > 0:
            head_idle = f"; no subscriber: {d_idle} images not processed"
        else:
            head_idle = ""
        for key in ("warning", "error"):
            if status.get(key):
                warns.append(str(status[key]))
        level = self.ERROR if errors else self.WARN if warns else self.OK
        head = f"{status['state']}, {rate:.1f} fps, model {status.get('model')}{head_idle}"
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
            # one call site per severity: rclpy's logger refuses two severities from one call site
            # ("Logger severity cannot be changed between calls")
            if level >= logging.ERROR:
                self.target.error(msg)
            elif level >= logging.WARNING:
                self.target.warning(msg)
            elif level >= logging.INFO:
                self.target.info(msg)
            else:
                self.target.debug(msg)
        except Exception:  # logging must never raise into the caller
            self.handleError(record)
