"""The node's frame loop without ROS: a one-slot :class:`Mailbox` between the subscription
callback and the inference loop, :class:`FrameLoop` (decode, the pipeline, output size,
the publish sink, counters, rate-limited warnings) and :class:`FrameStats`."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Dict, Optional

import cv2

from ..imgmsg import ImageDecodeError, UnsupportedEncoding, decode_message
from .phases import Counters, Phase, ema
from .pipeline import LivePipeline

log = logging.getLogger("ditta.live")


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
    def waiting(self) -> bool:
        """True when an item waits to be taken."""
        with self._cv:
            return self._item is not None

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return not self._open


class FrameStats:
    """Output figures, all on the steady clock (``time.monotonic``: right under ``use_sim_time``
    and bag replays, unlike header stamps): smoothed (exponential moving averages, weight 0.1)
    ``fps`` of the published label images, ``latency_ms`` (receive to publish: waiting in the
    mailbox included) and ``processing_ms`` (the loop taking the message to publish: decode,
    inference, output); ``last_latency_ms`` and ``last_processing_ms`` are the last frame's."""

    def __init__(self):
        self.fps = self.latency_ms = self.processing_ms = 0.0
        self.last_latency_ms = self.last_processing_ms = 0.0
        self.last_out: Optional[float] = None

    def update(self, received: float, started: float, now: float) -> None:
        """One label image published at ``now`` for a message received at ``received`` and taken
        by the loop at ``started`` (seconds of ``time.monotonic``)."""
        self.last_latency_ms = (now - received) * 1000.0
        self.last_processing_ms = (now - started) * 1000.0
        self.latency_ms = ema(self.latency_ms, self.last_latency_ms)
        self.processing_ms = ema(self.processing_ms, self.last_processing_ms)
        if self.last_out is not None:
            self.fps = ema(self.fps, 1.0 / max(1e-6, now - self.last_out))
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
        publish: the sink, ``(message, labels [h, w], confidence float32 [h, w], source) -> None``
            (the node's publishers).
        output_resolution: ``input`` (the frame's size) | ``network`` (the model input's).
        warn: ``str -> None`` for the per-message warnings (the node's logger).
        decode: ``message -> (frame uint8 [H, W, 3] RGB, stamp s)``, raising
            :class:`~ditta_ros.imgmsg.UnsupportedEncoding` / :class:`~ditta_ros.imgmsg.ImageDecodeError`
            (default: :func:`~ditta_ros.imgmsg.decode_message`).
        wanted: ``() -> bool``, whether anyone takes the outputs (the node: a subscriber on one of
            them); when it is false outside the warm-up the message is not decoded nor inferred,
            only counted as ``idle`` (the message is still received). ``None``: always wanted.
        timing: ``(processing_ms, latency_ms) -> None``, called after each published label image
            (the node's numeric timing topics).

    The frame path runs one way: the node's callback :meth:`offer` s a message; the loop takes
    it, decodes it, runs the pipeline, sizes the output and hands it to ``publish``. Where the serving
    model is a pipeline (``openvino_streams`` >= 2: :meth:`LivePipeline.start` gives a token), the loop
    overlaps two frames: while a message waits in the mailbox, it starts the frame in hand, then takes the
    waiting one, decodes it and starts it before it fuses and publishes the first; that one is published
    next, in order. With no message waiting a frame is served alone on all cores, so a camera slower than
    the node sees no added latency.

    A bad message is counted by reason and skipped; the loop never dies on one message. Times are
    on the steady clock (``time.monotonic``): ``last_in`` too.
    ``enabled = False`` pauses inference (messages are counted as ``paused``); the
    adaptation and the stream state are kept.
    """

    def __init__(self, pipeline: LivePipeline, publish: Callable, output_resolution: str = "input",
                 warn: Callable[[str], None] = log.warning, decode: Callable = decode_message,
                 wanted: Optional[Callable[[], bool]] = None,
                 timing: Optional[Callable[[float, float], None]] = None):
        self.pipeline, self.decode, self.publish = pipeline, decode, publish
        self.output_resolution, self.warn = output_resolution, warn
        self.wanted, self.timing = wanted, timing
        self.mailbox = Mailbox()
        self.stats = FrameStats()
        self.enabled = True
        self.last_in: Optional[float] = None  # steady-clock time of the last message received
        self._warned = set()
        self._ahead = None  # (msg, received, taken, frame, stamp, token): the next frame, started early

    @property
    def counters(self) -> Counters:
        """The pipeline's :class:`Counters` (one set for the loop and the pipeline)."""
        return self.pipeline.counters

    def offer(self, msg, received: Optional[float] = None) -> None:
        """Subscription callback body: never blocks."""
        received = time.monotonic() if received is None else received
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
        """Handle the waiting message (waiting up to ``timeout`` s for one; first the one started early,
        if any); a bad one is counted by reason and logged. True when a message was taken."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and not self.enabled:  # paused after it was started ahead
            self.counters.paused += 1
            return True
        if ahead is None:
            item = self.mailbox.get(timeout)
            if item is None or self.mailbox.closed:
                return False
            msg, received = item
            if not self._wanted_now():
                self.counters.idle += 1  # nobody takes the outputs: no decoding, no inference
                return True
        else:
            msg, received = ahead[:2]
        self._guarded(msg, lambda: self.handle(msg, received, ahead))
        return True

    def _wanted_now(self) -> bool:
        return self.wanted is None or self.pipeline.phase == Phase.WARMUP or self.wanted()

    def _guarded(self, msg, work: Callable[[], None]) -> None:
        """Run ``work`` for ``msg``; a bad message is counted by reason and logged, never raised."""
        try:
            work()
        except UnsupportedEncoding as exc:
            self._bad("unsupported_encoding", exc, once=getattr(msg, "encoding", str(exc)))
        except ImageDecodeError as exc:
            self._bad("decode_error", exc)
        except ValueError as exc:
            self._bad("bad_output", exc)
        except Exception as exc:  # never die on one message
            self._bad("internal_error", exc)

    def stop(self) -> None:
        """End :meth:`run` (it returns within 0.5 s); a frame started ahead and not handled is counted as
        dropped."""
        self.mailbox.close()
        if self._ahead is not None:
            self._ahead = None
            self.counters.dropped += 1

    def handle(self, msg, received: float, ahead=None) -> None:
        """Decode, run, resize to the output size, publish, count one message (``received``:
        ``time.monotonic`` seconds; ``ahead``: the message already decoded and started by :meth:`_look_ahead`;
        its processing time is its decoding plus the time from here to its publishing)."""
        if ahead is None:
            started = time.monotonic()
            frame, stamp = self.decode(msg)
            # overlap only with a message waiting: alone, a frame is served faster on all cores
            token = self.pipeline.start(frame) if self.mailbox.waiting else None
        else:  # its decoding (done ahead) counts, not the previous frame's work it overlapped
            decode_s, frame, stamp, token = ahead[2:]
            started = time.monotonic() - decode_s
        if token is not None:
            self._look_ahead()
        pred, _ = self.pipeline.process(frame, stamp, started=token)
        labels, conf = pred.labels, pred.confidence
        if self.output_resolution == "network":
            h, w = self.pipeline.runner.model.preprocess.input_hw(frame.shape[:2])
            labels = cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)
            conf = cv2.resize(conf, (w, h), interpolation=cv2.INTER_LINEAR)
        self.publish(msg, labels, conf, self.pipeline.last_source)
        self.counters.frames_out += 1
        self.stats.update(received, started, time.monotonic())
        if self.timing is not None:
            self.timing(self.stats.last_processing_ms, self.stats.last_latency_ms)

    def _look_ahead(self) -> None:
        """Take the message waiting in the mailbox (none: return at once), decode it and start it on the
        pipeline, to be handled by the next :meth:`step`; a bad one is counted as usual."""
        item = self.mailbox.get(0.0)
        if item is None or self.mailbox.closed:
            return
        msg, received = item

        def start():
            if not self._wanted_now():
                self.counters.idle += 1
                return
            taken = time.monotonic()
            frame, stamp = self.decode(msg)
            self._ahead = (msg, received, time.monotonic() - taken, frame, stamp, self.pipeline.start(frame))

        self._guarded(msg, start)

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
