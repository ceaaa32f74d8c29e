"""The live pipeline behind the ROS node, without ROS (the node is only its I/O).

* :mod:`.config` -- :class:`LiveConfig` (one field per pipeline parameter), :class:`ParameterError`;
* :mod:`.pipeline` -- :class:`LivePipeline`: the phase machine, control (readapt, reset, save);
* :mod:`.warmup` -- the warm-up window; :mod:`.adaptation` -- one adaptation in a worker thread;
* :mod:`.serving` -- which model answers a frame (ISS, adapted, fallback; per-size preparation);
* :mod:`.checkpoints` -- start from / save an adaptation;
* :mod:`.loop` -- the frame loop (:class:`Mailbox`, :class:`FrameLoop`, :class:`FrameStats`);
* :mod:`.health` -- diagnostics level per period, core logs to the node's logger;
* :mod:`.phases`, :mod:`.scene` -- phases and counters; scene-change detection.
"""

from .config import LiveConfig, ParameterError
from .health import Health, LogForwarder
from .loop import FrameLoop, FrameStats, Mailbox
from .phases import SOURCES, Counters, Phase
from .pipeline import LivePipeline
from .scene import SceneChangeDetector
from .serving import NONFINITE_LIMIT, Serving

__all__ = ["Counters", "FrameLoop", "FrameStats", "Health", "LiveConfig", "LivePipeline", "LogForwarder", "Mailbox",
           "NONFINITE_LIMIT", "ParameterError", "Phase", "SOURCES", "SceneChangeDetector", "Serving"]
