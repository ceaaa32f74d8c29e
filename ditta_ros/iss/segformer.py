"""SegFormer (Xie et al., NeurIPS 2021) behind the ISS interface, via ``transformers``.

* :func:`load_segformer` loads a local Hugging Face model directory (what a user
  downloads, e.g. ``nvidia/segformer-b0-finetuned-ade-512-512``: ``config.json``
  + ``model.safetensors`` and optionally ``preprocessor_config.json``).
* :class:`SegFormerISS` exposes ``features`` = the decode head's fused map after
  ``linear_fuse -> batch_norm -> ReLU`` (before dropout and the classifier), the
  map the official DiTTA head calls ``_c``, at 1/4 of the input resolution.
* :func:`convert_mmseg_checkpoint` turns an mmseg-style SegFormer checkpoint (the
  SegFormer/CFFM/DiTTA releases: ``backbone.*``, ``decode_head.linear_c{1..4}``,
  ``decode_head.linear_fuse.conv|bn``, ``decode_head.linear_pred`` and DiTTA's
  ``decode_head.query_layer``, ``key_layer``, ``proj_feat``) into such a directory
  plus ``ditta_addon.safetensors`` with the add-on weights.
"""

from __future__ import annotations

import json
import os
import re
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .base import IMAGENET_MEAN, IMAGENET_STD, ISSModel, Preprocess

ADDON_FILE = "ditta_addon.safetensors"


class SegFormerISS(ISSModel):
    """Wraps ``transformers.SegformerForSemanticSegmentation``.

    ``forward(images [B,3,H,W]) -> (features [B,D,H/4,W/4], logits [B,C,H/4,W/4])``
    with ``D = config.decoder_hidden_size``. Parameter groups: ``backbone``
    (``segformer.*``), ``decoder`` (``decode_head.*``), ``cls_head``
    (``decode_head.classifier``). Upsampling uses ``align_corners=False`` (mmseg).
    """

    family = "segformer"
    upsample_align_corners = False

    def __init__(self, hf_model, preprocess: Preprocess):
        super().__init__()
        self.hf = hf_model
        cfg = hf_model.config
        self.num_classes = int(cfg.num_labels)
        self.feature_dim = int(cfg.decoder_hidden_size)
        self.preprocess = preprocess

    def encode(self, images: torch.Tensor):
        """The four encoder stages' outputs (``[B, C_i, H/4 .. H/32, ...]``)."""
        return tuple(self.hf.segformer(images, output_hidden_states=True).hidden_states)

    def decode(self, encoded) -> torch.Tensor:
        """Fused decoder features ``[B, D, H/4, W/4]`` (after BN + ReLU) from :meth:`encode`."""
        head = self.hf.decode_head
        b = encoded[0].shape[0]
        size = encoded[0].shape[2:]
        projected = []
        for state, proj in zip(encoded, head.linear_projections):
            h, w = state.shape[2:]
            x = proj(state).transpose(1, 2).reshape(b, -1, h, w)
            if (h, w) != tuple(size):
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            projected.append(x)
        fused = head.linear_fuse(torch.cat(projected[::-1], dim=1))
        return head.activation(head.batch_norm(fused))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        head = self.hf.decode_head
        return head.classifier(head.dropout(features))

    def param_groups(self) -> Dict[str, List[nn.Parameter]]:
        return {
            "backbone": list(self.hf.segformer.parameters()),
            "decoder": list(self.hf.decode_head.parameters()),
            "cls_head": list(self.hf.decode_head.classifier.parameters()),
        }


def _preprocess_from_dir(path: str, default_size: Tuple[int, int]) -> Preprocess:
    """Read ``preprocessor_config.json`` (size, mean, std) when present."""
    size = default_size
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    cfg_path = os.path.join(path, "preprocessor_config.json")
    if os.path.isfile(cfg_path):
        with open(cfg_path) as f:
            cfg = json.load(f)
        s = cfg.get("size")
        if isinstance(s, dict) and "height" in s and "width" in s:
            size = (int(s["width"]), int(s["height"]))
        elif isinstance(s, int):
            size = (s, s)
        mean = tuple(cfg.get("image_mean", mean))
        std = tuple(cfg.get("image_std", std))
    return Preprocess(mode="fixed", size=size, mean=mean, std=std, resize="pil")


def load_segformer(path: str, input_size: Optional[Tuple[int, int]] = None,
                   preprocess: Optional[Preprocess] = None) -> SegFormerISS:
    """Load a SegFormer from a local Hugging Face model directory (no network).

    Args:
        path: folder with ``config.json`` and weights.
        input_size: ``(width, height)`` override of the input size (default: the
            directory's ``preprocessor_config.json``, else 512x512).
        preprocess: full override of the preprocessing.

    Raises:
        FileNotFoundError: no ``config.json`` in ``path``.
        ValueError: the config is not a SegFormer.
    """
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{path} is not a Hugging Face model directory (no config.json)")
    config = SegformerConfig.from_pretrained(path, local_files_only=True)
    if config.model_type != "segformer":
        raise ValueError(f"{path} holds a {config.model_type!r} model, not a SegFormer")
    hf = SegformerForSemanticSegmentation.from_pretrained(path, local_files_only=True)
    if preprocess is None:
        preprocess = _preprocess_from_dir(path, (512, 512))
        if input_size is not None:
            preprocess = Preprocess(mode="fixed", size=tuple(input_size), mean=preprocess.mean,
                                    std=preprocess.std, resize=preprocess.resize)
    model = SegFormerISS(hf.eval(), preprocess)
    model.eval()
    return model


# --------------------------------------------------------------------------- #
# mmseg -> Hugging Face conversion
# --------------------------------------------------------------------------- #

ADDON_PREFIXES = ("decode_head.query_layer.", "decode_head.key_layer.", "decode_head.proj_feat.")


def _mmseg_to_hf_key(key: str) -> Optional[str]:
    """Map one mmseg key to its Hugging Face hub name (``transformers`` renames hub
    names to its current module names at load). ``None`` for keys with no
    counterpart (the add-on's keys are handled separately)."""
    rules = [
        (r"^backbone\.patch_embed(\d)\.proj\.", lambda m: f"segformer.encoder.patch_embeddings.{int(m[1]) - 1}.proj."),
        (r"^backbone\.patch_embed(\d)\.norm\.", lambda m: f"segformer.encoder.patch_embeddings.{int(m[1]) - 1}.layer_norm."),
        (r"^backbone\.norm(\d)\.", lambda m: f"segformer.encoder.layer_norm.{int(m[1]) - 1}."),
        (r"^backbone\.block(\d)\.(\d+)\.", lambda m: f"segformer.encoder.block.{int(m[1]) - 1}.{m[2]}."),
        (r"^decode_head\.linear_c(\d)\.proj\.", lambda m: f"decode_head.linear_c.{int(m[1]) - 1}.proj."),
        (r"^decode_head\.linear_fuse\.conv\.", lambda m: "decode_head.linear_fuse."),
        (r"^decode_head\.linear_fuse\.bn\.", lambda m: "decode_head.batch_norm."),
        (r"^decode_head\.linear_pred\.", lambda m: "decode_head.classifier."),
    ]
    block_rules = [
        ("norm1.", "layer_norm_1."), ("norm2.", "layer_norm_2."),
        ("attn.q.", "attention.self.query."), ("attn.sr.", "attention.self.sr."),
        ("attn.norm.", "attention.self.layer_norm."), ("attn.proj.", "attention.output.dense."),
        ("mlp.fc1.", "mlp.dense1."), ("mlp.fc2.", "mlp.dense2."), ("mlp.dwconv.dwconv.", "mlp.dwconv.dwconv."),
    ]
    for pattern, repl in rules:
        m = re.match(pattern, key)
        if m:
            new = repl(m) + key[m.end():]
            if pattern.startswith(r"^backbone\.block"):
                rest = key[m.end():]
                for old, hub in block_rules:
                    if rest.startswith(old):
                        return repl(m) + hub + rest[len(old):]
                return None
            return new
    return None


def convert_mmseg_state_dict(state: Dict[str, torch.Tensor]):
    """Convert an mmseg SegFormer state dict.

    Returns:
        ``(hf_state, addon_state, config_kwargs, dropped)``: hub-named tensors for
        ``SegformerForSemanticSegmentation``; the add-on tensors keyed
        ``query_layer.*``, ``key_layer.*``, ``proj_feat.*``; the ``SegformerConfig``
        fields inferred from the shapes (depths, hidden sizes, decoder width,
        classes); and the keys that were not used.

    Raises:
        ValueError: the checkpoint has no SegFormer backbone/decoder keys.
    """
    hf, addon, dropped = {}, {}, []
    for key, value in state.items():
        if key.startswith(ADDON_PREFIXES):
            addon[key[len("decode_head."):]] = value
            continue
        if ".attn.kv." in key:  # one Linear(dim, 2*dim) -> key and value
            m = re.match(r"^backbone\.block(\d)\.(\d+)\.attn\.kv\.(weight|bias)$", key)
            if not m:
                dropped.append(key)
                continue
            base = f"segformer.encoder.block.{int(m[1]) - 1}.{m[2]}.attention.self."
            k, v = value.chunk(2, dim=0)
            hf[base + "key." + m[3]] = k.clone()
            hf[base + "value." + m[3]] = v.clone()
            continue
        new = _mmseg_to_hf_key(key)
        if new is None:
            dropped.append(key)
        else:
            hf[new] = value
    stages = sorted({int(m[1]) for k in state for m in [re.match(r"^backbone\.block(\d)\.", k)] if m})
    if not stages or "decode_head.linear_pred.weight" not in state:
        raise ValueError("not an mmseg SegFormer checkpoint: no backbone.block* or decode_head.linear_pred keys")
    depths = [1 + max(int(m[1]) for k in state for m in [re.match(rf"^backbone\.block{s}\.(\d+)\.", k)] if m)
              for s in stages]
    hidden = [int(state[f"backbone.patch_embed{s}.proj.weight"].shape[0]) for s in stages]
    cfg = dict(
        num_encoder_blocks=len(stages), depths=depths, hidden_sizes=hidden,
        decoder_hidden_size=int(state["decode_head.linear_c1.proj.weight"].shape[0]),
        num_labels=int(state["decode_head.linear_pred.weight"].shape[0]),
        sr_ratios=[int(state[f"backbone.block{s}.0.attn.sr.weight"].shape[-1])
                   if f"backbone.block{s}.0.attn.sr.weight" in state else 1 for s in stages],
        patch_sizes=[int(state[f"backbone.patch_embed{s}.proj.weight"].shape[-1]) for s in stages],
        mlp_ratios=[int(state[f"backbone.block{s}.0.mlp.fc1.weight"].shape[0]) // h for s, h in zip(stages, hidden)],
    )
    return hf, addon, cfg, dropped


def convert_mmseg_checkpoint(src: str, out_dir: str, num_attention_heads=(1, 2, 5, 8),
                             id2label: Optional[Dict[int, str]] = None,
                             input_size: Tuple[int, int] = (512, 512)) -> Dict[str, object]:
    """Write a Hugging Face SegFormer directory from an mmseg checkpoint.

    Args:
        src: ``.pth`` with a ``state_dict`` (or a bare state dict).
        out_dir: destination folder (created).
        num_attention_heads: heads per stage (not recoverable from shapes; MiT-B0..B5
            all use 1, 2, 5, 8).
        id2label: optional class names.
        input_size: ``(width, height)`` written to ``preprocessor_config.json``.

    Returns:
        a summary dict: ``config`` fields, ``addon_keys``, ``dropped`` keys.

    Raises:
        FileNotFoundError, ValueError (see :func:`convert_mmseg_state_dict`),
        RuntimeError: the converted weights do not load strictly.
    """
    from safetensors.torch import save_file
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    if not os.path.isfile(src):
        raise FileNotFoundError(f"checkpoint not found: {src}")
    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
    hf_state, addon_state, cfg_kwargs, dropped = convert_mmseg_state_dict(state)
    cfg_kwargs["num_attention_heads"] = list(num_attention_heads)[: cfg_kwargs["num_encoder_blocks"]]
    cfg_kwargs["strides"] = [4] + [2] * (cfg_kwargs["num_encoder_blocks"] - 1)
    if id2label:
        cfg_kwargs["id2label"] = {int(k): v for k, v in id2label.items()}
        cfg_kwargs["label2id"] = {v: int(k) for k, v in id2label.items()}
    config = SegformerConfig(**cfg_kwargs)
    os.makedirs(out_dir, exist_ok=True)
    config.save_pretrained(out_dir)
    save_file({k: v.contiguous() for k, v in hf_state.items()}, os.path.join(out_dir, "model.safetensors"),
              metadata={"format": "pt"})
    if addon_state:
        save_file({k: v.contiguous() for k, v in addon_state.items()}, os.path.join(out_dir, ADDON_FILE))
    with open(os.path.join(out_dir, "preprocessor_config.json"), "w") as f:
        json.dump({"size": {"width": int(input_size[0]), "height": int(input_size[1])},
                   "image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD)}, f, indent=1)
    # check: every model parameter must come from the checkpoint
    _, info = SegformerForSemanticSegmentation.from_pretrained(out_dir, local_files_only=True,
                                                               output_loading_info=True)
    if info.get("missing_keys") or info.get("mismatched_keys"):
        raise RuntimeError(f"converted checkpoint does not load strictly: missing {info.get('missing_keys')}, "
                           f"mismatched {info.get('mismatched_keys')}")
    return {"config": cfg_kwargs, "addon_keys": sorted(addon_state), "dropped": dropped}


def load_addon_state(path: str) -> Dict[str, torch.Tensor]:
    """The add-on tensors a converted directory carries (empty dict if none)."""
    from safetensors.torch import load_file

    f = os.path.join(path, ADDON_FILE)
    return load_file(f) if os.path.isfile(f) else {}
