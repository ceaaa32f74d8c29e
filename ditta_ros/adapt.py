"""DiTTA test-time adaptation (paper Sec. 3.3, Eq. 5-8; official ``ditta/tta.py``).

A fresh copy of the pre-trained model is adapted per clip: AdamW (lr 1e-3,
betas 0.9/0.999) over a parameter group (``decoder`` | ``cls_head`` | ``addon``),
``iters`` (5) passes over the warm-up frames, one frame per step, the model in
train mode; a momentum copy (EMA 0.99) provides per-object prototypes.

Loss per step (Eq. 8) = CE(plain branch) + CE(add-on branch) against the Eq. 5
label + the mask contrastive CE (Eq. 6-7: cosine similarity of the projected
features to the reliability-weighted object prototypes, temperature 1, running
average of each prototype across steps).

``loss_mode="faithful"`` (default) reproduces the official code exactly where it
departs from the paper:

* the cross entropy is applied to class *probabilities* (a softmax already
  applied, then ``F.cross_entropy`` applies log-softmax again);
* reductions are means over *all* pixels, ignored ones counted as 0 (mmseg);
* the contrastive reliability is the min-max normalised entropy of the
  softmax of the probabilities, and a prototype is ``sum(rel * feat) / |object|``.

``loss_mode="corrected"`` uses cross entropy on logits, means over valid pixels,
the Eq. 2 reliability, and a reliability-weighted mean for prototypes.

Options of ours that keep the adaptation from erasing what the model knows (off in
:data:`FAITHFUL_ADAPT`):

* ``bn="frozen"`` -- the decoder's BatchNorm layers stay in eval mode (running
  statistics of the pre-trained model, not of a two-frame batch); their affine
  parameters still adapt. ``"train"`` is the official behaviour.
* ``anchor`` -- weight of a self-distillation term to the frozen ISS:
  ``anchor * mean_pixels KL(p_ISS || p_plain)`` on the network grid, the ISS run in
  eval mode on the same cached backbone outputs.

Deliberate, documented difference: the frozen backbone runs in eval mode
(BatchNorm statistics frozen, no stochastic depth), so its outputs are computed
once per warm-up frame and reused by every pass and by the momentum model. The
official code runs its frozen MiT backbone in train mode (drop-path 0.1 active);
for BN backbones such as ESPNetv2 train mode would replace the trained
statistics with those of a two-frame batch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .addon import DEFAULT_ADDON_SEED, DEFAULT_RADIUS, TemporalAddon, make_projection_head, reliability
from .iss.base import ISSModel, logits_to_frame
from .teacher.targets import IGNORE_INDEX

PARAM_GROUPS = ("decoder", "cls_head", "addon")
LOSS_MODES = ("faithful", "corrected")
BN_MODES = ("train", "frozen")


class DiTTANet(nn.Module):
    """ISS model + temporal add-on + contrastive projection head (the official
    ``DiTTAHead`` split into our parts).

    Args:
        iss: the ISS model (its backbone is frozen by :class:`Adapter`).
        addon: :class:`TemporalAddon` (seeded default init when ``None``).
        proj: projection head (seeded default init when ``None``).
        grid_stride: the add-on's pooling of the decoder grid (:class:`TemporalAddon`);
            0 = the ISS model's own (``iss.addon_grid_stride``).
    """

    def __init__(self, iss: ISSModel, addon: Optional[TemporalAddon] = None, proj: Optional[nn.Module] = None,
                 radius: int = DEFAULT_RADIUS, seed: int = DEFAULT_ADDON_SEED, grid_stride: int = 0):
        super().__init__()
        self.iss = iss
        if addon is None:
            addon = TemporalAddon(iss.feature_dim, radius, seed, grid_stride=grid_stride or iss.addon_grid_stride)
        self.addon = addon
        if proj is None:
            # seeded default init without touching the caller's global RNG state
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                proj = make_projection_head(iss.feature_dim)
        self.proj = proj

    def param_group(self, name: str) -> List[nn.Parameter]:
        """``decoder`` (ISS decoder + add-on + projection), ``cls_head`` or ``addon``."""
        if name == "decoder":
            return self.iss.param_groups()["decoder"] + list(self.addon.parameters()) + list(self.proj.parameters())
        if name == "cls_head":
            return self.iss.param_groups()["cls_head"]
        if name == "addon":
            return list(self.addon.parameters())
        raise ValueError(f"unknown parameter group {name!r}; choose from {PARAM_GROUPS}")

    def heads(self, encoded_prev, encoded_cur, with_addon: bool = True):
        """Decoder + add-on on cached backbone outputs.

        Returns ``(plain [1,C,h,w], addon [1,C,h,w] or None, proj [1,D,h,w])`` for the
        current frame; the add-on attends to the previous frame when given (and
        ``with_addon``). The previous frame still goes through the decoder in the same
        batch, so train-mode BatchNorm sees both frames as in the official two-frame clip.
        """
        if encoded_prev is None:
            feats = self.iss.decode(encoded_cur)
            logits = self.iss.classify(feats)
            return logits, None, self.proj(feats)
        enc = tuple(torch.cat([p, c], 0) for p, c in zip(encoded_prev, encoded_cur))
        feats = self.iss.decode(enc)
        logits = self.iss.classify(feats)
        addon = self.addon(feats[1:], feats[:1], logits[:1]) if with_addon else None
        return logits[1:], addon, self.proj(feats[1:])


def set_train_mode(net: DiTTANet) -> None:
    """Train mode for everything but the frozen backbone (kept in eval: see module docstring)."""
    net.train()
    backbone_ids = {id(p) for p in net.iss.param_groups()["backbone"]}
    for m in net.iss.modules():
        params = list(m.parameters(recurse=False))
        if params and all(id(p) in backbone_ids for p in params):
            m.eval()


def _ce(scores: torch.Tensor, target: torch.Tensor, faithful: bool) -> torch.Tensor:
    """Cross entropy ``[1, K, H, W]`` vs ``[1, H, W]`` (255 ignored): faithful = mean over
    all pixels (ignored count 0, mmseg), corrected = mean over valid pixels."""
    loss = F.cross_entropy(scores, target, reduction="none", ignore_index=IGNORE_INDEX)
    if faithful:
        return loss.mean()
    valid = (target != IGNORE_INDEX).sum()
    return loss.sum() / valid.clamp_min(1)


@dataclass(frozen=True)
class AdaptConfig:
    """Hyper-parameters. ``lr`` .. ``contrastive`` are the official ones; ``bn`` and
    ``anchor`` are ours (module docstring). The defaults are the variant the decision
    rule of ``docs/dev_set_rule.md`` chose on the development set: only the add-on
    adapts (``params="addon"``: the ISS decoder is never changed), corrected losses,
    BatchNorm frozen; ``anchor`` acts only when the decoder adapts.
    :data:`FAITHFUL_ADAPT` is the official configuration.

    Raises:
        ValueError: unknown ``params``, ``loss_mode`` or ``bn``, ``iters`` < 1, ``anchor`` < 0.
    """

    lr: float = 1e-3
    iters: int = 5
    params: str = "addon"
    momentum: float = 0.99
    temperature: float = 1.0
    soft_contra: bool = True
    loss_mode: str = "corrected"
    contrastive: bool = True
    bn: str = "frozen"
    anchor: float = 1.0

    def __post_init__(self):
        if self.params not in PARAM_GROUPS:
            raise ValueError(f"params must be one of {PARAM_GROUPS}, got {self.params!r}")
        if self.loss_mode not in LOSS_MODES:
            raise ValueError(f"loss_mode must be one of {LOSS_MODES}, got {self.loss_mode!r}")
        if self.bn not in BN_MODES:
            raise ValueError(f"bn must be one of {BN_MODES}, got {self.bn!r}")
        if self.iters < 1:
            raise ValueError(f"iters must be >= 1, got {self.iters}")
        if self.anchor < 0:
            raise ValueError(f"anchor must be >= 0, got {self.anchor}")


#: the official adaptation
FAITHFUL_ADAPT = AdaptConfig(lr=1e-3, iters=5, params="decoder", momentum=0.99, temperature=1.0, soft_contra=True,
                             loss_mode="faithful", contrastive=True, bn="train", anchor=0.0)


def freeze_batchnorm(net: nn.Module) -> None:
    """Put every BatchNorm layer of ``net`` in eval mode (running statistics kept)."""
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


class Adapter:
    """Adapts a copy of a :class:`DiTTANet` on warm-up frames (one clip).

    Args:
        net: the pre-trained network (not modified).
        cfg: :class:`AdaptConfig`.

    Raises:
        ValueError: unknown parameter group or loss mode.
    """

    def __init__(self, net: DiTTANet, cfg: AdaptConfig = AdaptConfig()):
        if cfg.loss_mode not in LOSS_MODES:
            raise ValueError(f"loss_mode must be one of {LOSS_MODES}, got {cfg.loss_mode!r}")
        self.cfg = cfg
        self.model = copy.deepcopy(net)
        self.momentum_model = copy.deepcopy(net)
        backbone = {id(p) for p in self.model.iss.param_groups()["backbone"]}
        for m in (self.model, self.momentum_model):
            mb = {id(p) for p in m.iss.param_groups()["backbone"]}
            for p in m.parameters():
                p.requires_grad_(id(p) not in mb)
        params = self.model.param_group(cfg.params)
        assert not any(id(p) in backbone for p in params)
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999))
        self.reference: Optional[DiTTANet] = None
        # the anchor acts on the plain branch: with only the add-on adapted it has no gradient
        if cfg.anchor > 0 and cfg.params != "addon":
            self.reference = copy.deepcopy(net).eval()
            for p in self.reference.parameters():
                p.requires_grad_(False)
        self._reference_cache: Dict[int, torch.Tensor] = {}
        self.prototypes: Dict[int, torch.Tensor] = {}
        self.faithful = cfg.loss_mode == "faithful"

    @torch.no_grad()
    def _reference_logprob(self, enc_cur, frame_key: Optional[int]) -> torch.Tensor:
        """The frozen reference's plain log-probabilities ``[1, C, h, w]`` on ``enc_cur`` (cached per ``frame_key``)."""
        if frame_key is not None and frame_key in self._reference_cache:
            return self._reference_cache[frame_key]
        ref = torch.log_softmax(self.reference.heads(None, enc_cur)[0], 1)
        if frame_key is not None:
            self._reference_cache[frame_key] = ref
        return ref

    @torch.no_grad()
    def _update_momentum(self) -> None:
        m = self.cfg.momentum
        for ema, live in zip(self.momentum_model.parameters(), self.model.parameters()):
            ema.mul_(m).add_(live.detach(), alpha=1 - m)

    def _to_frame(self, logits: torch.Tensor, input_hw, frame_hw) -> torch.Tensor:
        return logits_to_frame(self.model.iss, logits, input_hw, frame_hw)

    def step(self, enc_prev, enc_cur, input_hw, label: torch.Tensor, obj_map: torch.Tensor,
             frame_key: Optional[int] = None) -> Dict[str, float]:
        """One optimisation step on one warm-up frame.

        Args:
            enc_prev, enc_cur: cached backbone outputs of frames t-1 (or ``None``) and t.
            input_hw: network input size; label: int64 ``[H, W]`` Eq. 5 label at frame size;
            obj_map: int64 ``[H, W]`` object ids (0 = none).
            frame_key: names ``enc_cur`` across passes (its warm-up index): the frozen reference's
                log-probabilities of the KL anchor are then computed once per frame, not once per pass
                (the same values: the reference never changes).

        Returns:
            scalar losses: ``distill``, ``distill_addon`` (when t > 0), ``contra``, ``total``.
        """
        frame_hw = tuple(label.shape)
        set_train_mode(self.model)
        if self.cfg.bn == "frozen":
            freeze_batchnorm(self.model)
        plain, addon, proj = self.model.heads(enc_prev, enc_cur)
        with torch.no_grad():
            set_train_mode(self.momentum_model)
            if self.cfg.bn == "frozen":
                freeze_batchnorm(self.momentum_model)
            plain_mo, _, proj_mo = self.momentum_model.heads(enc_prev, enc_cur, with_addon=False)
        target = label.unsqueeze(0)
        losses: Dict[str, torch.Tensor] = {}
        plain_f = self._to_frame(plain, input_hw, frame_hw)
        if self.faithful:  # official quirk: CE on softmax probabilities
            losses["distill"] = _ce(torch.softmax(plain_f, 1), target, True)
        else:
            losses["distill"] = _ce(plain_f, target, False)
        if addon is not None:
            addon_f = self._to_frame(addon, input_hw, frame_hw)
            losses["distill_addon"] = _ce(torch.softmax(addon_f, 1), target, True) if self.faithful \
                else _ce(addon_f, target, False)
        if self.cfg.contrastive:
            contra = self._contrastive(obj_map, proj, proj_mo, self._to_frame(plain_mo, input_hw, frame_hw))
            if contra is not None:
                losses["contra"] = contra
        if self.reference is not None:
            ref = self._reference_logprob(enc_cur, frame_key)
            kl = (ref.exp() * (ref - torch.log_softmax(plain, 1))).sum(1).mean()
            losses["anchor"] = self.cfg.anchor * kl
        total = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        self._update_momentum()
        out = {k: float(v.detach()) for k, v in losses.items()}
        out["total"] = float(total.detach())
        return out

    def step_addon(self, cached_prev, cached_cur, input_hw, label: torch.Tensor) -> Dict[str, float]:
        """One optimisation step when only the add-on adapts (``params="addon"``, ``bn="frozen"``):
        the decoder never changes, so its features and plain logits are computed once per
        warm-up frame (``cached_*`` = ``(features, logits)``, :meth:`decode_cached`) and only
        the add-on's distillation term runs. Equal to :meth:`step` (the other terms have no
        gradient on the add-on; ``test/test_adapt.py``), at a fraction of its cost.

        Returns:
            scalar losses: ``distill_addon`` and ``total``.
        """
        frame_hw = tuple(label.shape)
        addon = self.model.addon(cached_cur[0], cached_prev[0], cached_prev[1])
        addon_f = self._to_frame(addon, input_hw, frame_hw)
        target = label.unsqueeze(0)
        loss = _ce(torch.softmax(addon_f, 1), target, True) if self.faithful else _ce(addon_f, target, False)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        value = float(loss.detach())
        return {"distill_addon": value, "total": value}

    @torch.no_grad()
    def decode_cached(self, encoded) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(features, plain logits)`` of one warm-up frame from its cached backbone outputs,
        the decoder in the mode :meth:`step` trains it in (BatchNorm frozen)."""
        set_train_mode(self.model)
        freeze_batchnorm(self.model)
        feats = self.model.iss.decode(encoded)
        return feats, self.model.iss.classify(feats)

    @property
    def addon_only(self) -> bool:
        """True when :meth:`step_addon` is exact for this configuration (only the add-on
        adapts and BatchNorm is frozen, so the decoder's outputs never change)."""
        return self.cfg.params == "addon" and self.cfg.bn == "frozen"

    def _contrastive(self, obj_map, proj, proj_mo, logits_mo) -> Optional[torch.Tensor]:
        """Mask-based contrastive loss against momentum prototypes (Eq. 6-7)."""
        objects = [int(o) for o in torch.unique(obj_map).tolist() if o != 0]
        if not objects:
            return None
        h, w = obj_map.shape
        with torch.no_grad():
            fmo = F.normalize(proj_mo, dim=1)
            fmo = F.normalize(F.interpolate(fmo, (h, w), mode="bilinear", align_corners=False)[0], dim=0)
            prob_mo = torch.softmax(logits_mo, 1)
            if self.faithful:  # entropy of softmax(prob), min-max normalised (official)
                p2 = torch.softmax(prob_mo, 1)
                ent = -(p2 * torch.log_softmax(prob_mo, 1)).sum(1)[0]
                rel = 1 - (ent - ent.min()) / (ent.max() - ent.min()).clamp_min(1e-12)
            else:
                rel = reliability(prob_mo)[0]
            assignment = torch.full((1, h, w), IGNORE_INDEX, dtype=torch.long)
            protos = []
            for slot, oid in enumerate(objects):
                region = obj_map == oid
                inside = fmo[:, region]
                if not self.cfg.soft_contra:
                    proto = inside.mean(1)
                elif self.faithful:
                    proto = (inside * rel[region]).mean(1)
                else:
                    wts = rel[region]
                    proto = (inside * wts).sum(1) / wts.sum().clamp_min(1e-12)
                proto = F.normalize(proto, dim=0)
                if oid in self.prototypes:
                    proto = F.normalize((proto + self.prototypes[oid]) / 2, dim=0)
                self.prototypes[oid] = proto
                protos.append(proto)
                assignment[0, region] = slot
            prototypes = torch.stack(protos, 1)  # [D, O]
        d = proj.shape[1]
        f = F.normalize(proj, dim=1)
        f = F.normalize(F.interpolate(f, (h, w), mode="bilinear", align_corners=False)[0], dim=0)
        sim = (f.view(d, h * w).t() @ prototypes).t().reshape(1, -1, h, w)
        return _ce(sim / self.cfg.temperature, assignment, self.faithful)


def adapt(net: DiTTANet, encoded: Sequence, input_hw, labels: Sequence[np.ndarray], obj_maps: Sequence[np.ndarray],
          cfg: AdaptConfig = AdaptConfig(), progress=None) -> Tuple[DiTTANet, Dict[str, float]]:
    """Adapt a copy of ``net`` on the warm-up frames (one frame per step, ``cfg.iters``
    passes) and return it in eval mode with the last step's losses.

    When only the add-on adapts with BatchNorm frozen (the default configuration) the
    decoder runs once per frame and each step trains the add-on alone
    (:meth:`Adapter.step_addon`): the same updates as the full step, which also
    computes the plain-branch and contrastive terms that cannot move the add-on.

    Args:
        encoded: per warm-up frame, the frozen backbone's outputs (:meth:`ISSModel.encode`).
        input_hw: network input size.
        labels: per frame, int ``[H, W]`` Eq. 5 labels; obj_maps: int ``[H, W]`` object ids.
    """
    adapter = Adapter(net, cfg)
    last: Dict[str, float] = {}
    history: List[float] = []
    # only the add-on adapts: decode each frame once, train the add-on on the cached outputs
    cached = [adapter.decode_cached(e) for e in encoded] if adapter.addon_only else None
    for _ in range(cfg.iters):
        for t in range(len(encoded)):
            if cached is not None:
                if t > 0:  # the first frame has no previous one: no add-on term, nothing to adapt
                    last = adapter.step_addon(cached[t - 1], cached[t], input_hw,
                                              torch.as_tensor(labels[t], dtype=torch.long))
                    history.append(last["total"])
                if progress is not None:
                    progress.update(1)
                continue
            last = adapter.step(encoded[t - 1] if t > 0 else None, encoded[t], input_hw,
                                torch.as_tensor(labels[t], dtype=torch.long),
                                torch.as_tensor(obj_maps[t].astype(np.int64)), frame_key=t)
            history.append(last["total"])
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{last['total']:.3f}")
    adapter.model.eval()
    for p in adapter.model.parameters():
        p.requires_grad_(False)
    last = dict(last, first_total=history[0] if history else float("nan"))
    return adapter.model, last
