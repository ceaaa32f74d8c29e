"""Method registry: ``--method NAME`` -> a :class:`~ditta_ros.protocol.Method`."""

from __future__ import annotations

from typing import Callable, Dict

from .inference import ISSRunner
from .protocol import Method


def _iss(runner: ISSRunner, **_) -> Method:
    from .baselines.iss import FrameWiseISS

    return FrameWiseISS(runner)


METHODS: Dict[str, Callable[..., Method]] = {"iss": _iss}


def make_method(name: str, runner: ISSRunner, **options) -> Method:
    """Build method ``name`` around ``runner``.

    Raises:
        ValueError: unknown method (the message lists the available ones).
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(METHODS)}")
    return METHODS[name](runner, **options)
