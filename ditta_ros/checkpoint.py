"""Adapted weights on disk: :func:`save_adapted` / :func:`load_adapted` (a ``state_dict`` and
the adaptation's provenance in one ``.pt``), and where the node keeps them
(``<checkpoint_dir>/<model>_<H>x<W>_<time>.pt``: :func:`checkpoint_path`, :func:`find_checkpoint`).
"""

from __future__ import annotations

import glob
import os
import re
import tempfile
import time
from typing import Dict, Optional, Sequence

import torch


def save_adapted(net, path: str, info: Optional[Dict[str, object]] = None) -> None:
    """Save an adapted network's weights (``state_dict``) and provenance to ``path``: written
    to a unique temporary file beside it and renamed into place, so a crash or a concurrent
    save never leaves a half-written checkpoint (a failed write removes its temporary file).

    Raises:
        OSError: the folder cannot be created or written.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"state_dict": net.state_dict(), "info": dict(info or {})}, f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a checkpoint is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_adapted(net, path: str) -> Dict[str, object]:
    """Load weights saved by :func:`save_adapted` into ``net`` (strict).

    Raises:
        FileNotFoundError: no such file; RuntimeError: the weights do not fit ``net``.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"adapted checkpoint not found: {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    net.load_state_dict(ckpt["state_dict"], strict=True)
    return ckpt.get("info", {})


def model_name(model: str) -> str:
    """A file-name-safe name of a ``model`` parameter (registry name, folder or file)."""
    return re.sub(r"[^\w.-]", "_", os.path.basename(model.rstrip("/\\"))) or "model"


def checkpoint_path(checkpoint_dir: str, model: str, frame_hw: Sequence[int]) -> str:
    """``<checkpoint_dir>/<model>_<H>x<W>_<YYYYmmdd-HHMMSS>.pt`` (``checkpoint_dir`` expanded)."""
    return os.path.join(os.path.expanduser(checkpoint_dir),
                        f"{model_name(model)}_{frame_hw[0]}x{frame_hw[1]}_{time.strftime('%Y%m%d-%H%M%S')}.pt")


def find_checkpoint(checkpoint_dir: str, model: str) -> Optional[str]:
    """The newest adaptation saved for ``model`` in ``checkpoint_dir`` (``None``: none)."""
    paths = glob.glob(os.path.join(os.path.expanduser(checkpoint_dir), f"{model_name(model)}_*.pt"))
    return max(paths, key=os.path.getmtime) if paths else None
