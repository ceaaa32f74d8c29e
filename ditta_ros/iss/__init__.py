"""ISS model families behind one interface (:class:`~ditta_ros.iss.base.ISSModel`).

:func:`load_model` accepts a registry name (``models/*.yaml``), a local Hugging
Face SegFormer directory, or an ESPNetv2 ``.pth`` named like the upstream files
(``espnetv2_s_<s>_<data>_<W>x<H>.pth``).
"""

from __future__ import annotations

import os
import re
from typing import Tuple

from .base import ISSModel, ModelInfo, Preprocess, logits_to_frame  # noqa: F401

_DEFAULT_LABEL_SETS = {19: "cityscapes19", 20: "cityscapes19", 11: "camvid11", 124: "vspw124", 150: "ade150"}


def load_model(name_or_path: str) -> Tuple[ISSModel, ModelInfo]:
    """Build an ISS model in eval mode on the CPU.

    Returns:
        ``(model, info)``; ``info.label_set`` names the label set of the model's
        output ids; the model carries the same ``info`` as its ``info`` attribute
        (export file names and logs use ``model.info.name``).

    Raises:
        ModelNotFoundError: unknown name or missing weights (lists where it looked).
        FileNotFoundError / ValueError: a path that is no supported model.
    """
    model, info = _load_model(name_or_path)
    model.info = info
    return model, info


def _load_model(name_or_path: str) -> Tuple[ISSModel, ModelInfo]:
    from .. import registry

    if os.path.isdir(name_or_path):
        from .segformer import load_segformer

        model = load_segformer(name_or_path)
        id2label = getattr(model.hf.config, "id2label", {}) or {}
        label_set = _DEFAULT_LABEL_SETS.get(model.num_classes, "custom")
        return model, ModelInfo(name=os.path.basename(os.path.normpath(name_or_path)), family="segformer",
                                label_set=label_set, weights=name_or_path,
                                extra={"classes": [id2label.get(i, str(i)) for i in range(model.num_classes)]})
    if os.path.isfile(name_or_path):
        m = re.search(r"espnetv2_s_([0-9.]+)_\w+?_(\d+)x(\d+)\.pth$", os.path.basename(name_or_path))
        if not m:
            raise ValueError(f"cannot tell the family of {name_or_path}: pass a registry name, a Hugging Face "
                             "directory, or an ESPNetv2 file named espnetv2_s_<s>_<data>_<W>x<H>.pth")
        from .espnetv2 import load_espnetv2

        model = load_espnetv2(name_or_path, float(m[1]), (int(m[2]), int(m[3])))
        return model, ModelInfo(name=os.path.basename(name_or_path), family="espnetv2",
                                label_set="cityscapes19", weights=name_or_path)
    card = registry.get_card(name_or_path)
    path = registry.fetch(card.name)
    if card.family == "espnetv2":
        from .espnetv2 import load_espnetv2

        model = load_espnetv2(path, float(card.params.get("s", 2.0)), tuple(card.input_size), card.num_classes)
    else:
        raise ValueError(f"model card {card.name} has unsupported family {card.family!r}")
    return model, ModelInfo(name=card.name, family=card.family, label_set=card.label_set, weights=path)
