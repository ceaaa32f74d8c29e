"""What the live pipeline reports: its :class:`Phase`, the :class:`Counters` of frames, and which
model made a label image (:data:`SOURCES`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Dict, Optional


class Phase(str, Enum):
    """Where the live pipeline is; the value is what ``ditta/status`` reports as ``state``."""

    WARMUP = "WARMUP"
    ADAPTING = "ADAPTING"
    EXPORTING = "EXPORTING"
    STREAMING = "STREAMING"
    ISS = "ISS"  # pre-trained model only (adaptation off, or after reset())


#: where a label image came from (``ditta/status`` ``model``): the pre-trained model, the
#: adapted one, the pre-trained one standing in for an adapted model that failed on the frame
#: (non-finite output, a runtime error), or the pre-trained one fused with the previous frame
#: moved by optical flow while the first adaptation runs (``iss-flow``: ``flow_while_adapting``)
ISS_FLOW = "iss-flow"
SOURCES = ("iss", "adapted", "fallback", ISS_FLOW)


def ema(old: Optional[float], new: float, weight: float = 0.1) -> float:
    """Exponential moving average of a status figure: ``new`` when there is no ``old`` (``None`` or 0)."""
    return new if not old else (1 - weight) * old + weight * new


@dataclass
class Counters:
    """Frame counters for status and diagnostics: received, published, dropped while
    busy, paused (received while inference was disabled), idle (received after the warm-up while
    nobody subscribed to an output: not processed), bad (with a count per reason:
    unsupported_encoding, decode_error, bad_output, internal_error) and the label images
    per model that made them (:data:`SOURCES`)."""

    frames_in: int = 0
    frames_out: int = 0
    dropped: int = 0
    paused: int = 0
    idle: int = 0
    bad: int = 0
    bad_reasons: Dict[str, int] = field(default_factory=dict)
    by_model: Dict[str, int] = field(default_factory=lambda: {s: 0 for s in SOURCES})
