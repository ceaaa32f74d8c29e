"""Saved adaptations in the live pipeline: start from one (``adapted_checkpoint``:
:func:`load_for_serving`) and save the one being served (:func:`save_served`); the files
themselves are :mod:`ditta_ros.checkpoint`'s."""

from __future__ import annotations

import copy
import logging
import os
from typing import Dict, Optional, Tuple

from ..adapt import DiTTANet
from ..checkpoint import checkpoint_path, find_checkpoint, load_adapted, save_adapted
from ..runtime import FrozenDiTTA
from .config import LiveConfig, ParameterError
from .serving import Serving

log = logging.getLogger("ditta.live")


def resolve(cfg: LiveConfig) -> str:
    """The file ``cfg.adapted_checkpoint`` names (``latest``: the newest of ``cfg.model`` in
    ``cfg.checkpoint_dir``), expanded.

    Raises:
        ParameterError: ``latest`` and no saved adaptation of the model.
    """
    path = cfg.adapted_checkpoint
    if path == "latest":
        found = find_checkpoint(cfg.checkpoint_dir, cfg.model)
        if found is None:
            raise ParameterError("adapted_checkpoint", path, f"'latest' needs a saved adaptation of "
                                 f"{cfg.model} in checkpoint_dir {cfg.checkpoint_dir!r}; none found")
        path = found
    return os.path.expanduser(path)


def load_for_serving(cfg: LiveConfig, serving: Serving) -> Tuple[FrozenDiTTA, Dict[str, object], str]:
    """The adaptation ``cfg.adapted_checkpoint`` names, frozen for ``serving`` and prepared for
    the frame size it was made on: ``(frozen, meta, path)``.

    Raises:
        ParameterError: no such file, weights that do not fit the model, an adaptation of
            another model, or a runtime that cannot serve it.
    """
    path = resolve(cfg)
    try:
        net = DiTTANet(copy.deepcopy(serving.runner.model), grid_stride=serving.config.addon_stride)
        meta = load_adapted(net, path)
    except Exception as exc:
        raise ParameterError("adapted_checkpoint", path, f"an adaptation saved by this node for model "
                             f"{cfg.model} ({type(exc).__name__}: {exc})") from exc
    if meta.get("model") not in (None, cfg.model):
        raise ParameterError("adapted_checkpoint", path, f"an adaptation of model {cfg.model}; this one "
                             f"is of {meta.get('model')}")
    fusion = meta.get("fusion")
    if fusion is not None and fusion != serving.config.fusion:
        log.warning("the saved adaptation was made for fusion %r; it serves with it (the preset's is %r)", fusion,
                    serving.config.fusion)
    frozen = serving.freeze(net.eval(), meta.get("trained_gap"), fusion)
    if meta.get("frame_hw"):
        try:
            frozen.prepare(tuple(meta["frame_hw"]))
        except Exception as exc:
            raise ParameterError("backend", cfg.backend, f"a runtime that can serve {path} "
                                 f"({type(exc).__name__}: {exc})") from exc
    log.info("streaming from the saved adaptation %s (made %s on %s frames)", path, meta.get("created"),
             meta.get("frame_hw"))
    return frozen, dict(meta), path


def save_served(frozen: Optional[FrozenDiTTA], meta: Dict[str, object], cfg: LiveConfig,
                path: Optional[str] = None) -> str:
    """Save the adaptation being served (weights and ``meta``: model, frame size, warm-up stamps,
    target report, guard verdict) to ``path`` (default: :func:`~ditta_ros.checkpoint.checkpoint_path`
    in ``cfg.checkpoint_dir``); written to a temporary file and renamed. Returns the path.

    Raises:
        RuntimeError: no adapted model (``frozen`` is ``None``), or no ``checkpoint_dir`` and no
            ``path``; OSError: the file cannot be written (nothing is left behind).
    """
    if frozen is None:
        raise RuntimeError("no adapted model to save")
    if path is None:
        if not cfg.checkpoint_dir:
            raise RuntimeError("checkpoint_dir is empty: saving is off")
        path = checkpoint_path(cfg.checkpoint_dir, cfg.model, meta.get("frame_hw") or (0, 0))
    save_adapted(frozen.net, path, meta)
    log.info("adaptation saved to %s", path)
    return path
