"""The frozen streaming DiTTA model: ``step(frame, state) -> (labels, confidence, new_state)``.

One backbone pass per frame; the previous frame's decoder features and plain
logits are the state. Everything a caller would otherwise repeat lives inside,
so one definition serves torch inference, ONNX export, ``ditta eval`` and the
node:

* preprocessing: uint8 ``[H, W, 3]`` RGB in; antialiased bilinear resize to the
  network input (``align_corners=False``, rounded to integers: PIL's uint8
  bilinear resize, which the ISS models' reference preprocessing uses, to within
  one grey level; exported as ONNX ``Resize`` with ``antialias=1``), ``/255``,
  mean/std;
* the ISS forward (features, plain logits) and, where the state holds a usable
  previous frame (``has_prev = 1``, per pixel), the add-on (Eq. 1) and the
  reliability fusion (Eq. 3); on the first frame the plain branch only (official
  behaviour);
* the two-step resize of the probabilities to the frame, argmax and the Eq. 2
  reliability of the plain branch as confidence.

In eval mode this equals the official two-frame clip formulation (both frames
through the backbone, add-on from frame t-1 to t), see ``test/test_streaming.py``.

The fusion gates (``max_gap``, the motion gate) act on ``has_prev``: :mod:`ditta_ros.gates`;
serving on a runtime backend: :class:`ditta_ros.runtime.serving.FrozenDiTTA`.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .adapt import DiTTANet
from .addon import DEFAULT_TAU, fuse, normalised_reliability, reliability, softmax_entropy
from .iss.base import logits_to_frame, plain_step
from .presets import FLOW_FUSIONS, FLOW_GRIDS, FUSIONS, MEMORY_FUSIONS


class StreamingDiTTA(nn.Module):
    """Frozen streaming model for frames of a fixed size.

    Args:
        net: the (adapted or pre-trained) :class:`DiTTANet`, put in eval mode.
        frame_hw: ``(H, W)`` of the incoming frames (the output resolution).
        tau: fusion threshold (Eq. 3); ``0`` disables the temporal (add-on or flow) branch.
        antialias: PIL-like antialiased input resize (default). ``False`` gives a
            plain bilinear resize, for runtimes without ONNX ``Resize`` antialiasing
            (some TensorRT versions); slightly different inputs when downscaling.
        fusion: where the add-on branch's probabilities and Eq. 2 reliability are
            computed: ``"frame"`` (the paper's and official code's: its logits resized
            to the frame like the plain branch's, two-step) or ``"grid"`` (ours, cheaper:
            on the add-on's own grid, then probabilities and reliability resized to the
            frame in one bilinear step; the plain branch and Eq. 3 are unchanged) or ``"flow"``
            (ours: as ``"grid"`` with the previous frame's plain logits as the temporal branch, no
            attention; the caller moves them by optical flow first, :class:`~ditta_ros.gates.FlowWarp`)
            or ``"memory"`` (ours: as ``"flow"``, but the state carries a running memory instead of the
            plain logits: :meth:`memory`) or ``"bayes"`` (ours: as ``"memory"``, with the recursive Bayesian
            product in place of Eq. 3's average, for the memory and the labels, where the plain branch's
            reliability is below ``tau``: :func:`bayes_fuse`).
        flow_grid: with a fusion of :data:`~ditta_ros.presets.FLOW_FUSIONS`, the grid of the temporal state
            (``logits_prev`` in and ``logits`` out): ``"addon"`` (the add-on grid, as the features) or ``"model"``
            (the model's own output grid, unpooled; ``docs/dev_set_rule.md``, addendum 16; also with ``tau`` 0,
            for the plain graph that serves a flow fusion's first frames and hands it its state).

    ``forward(image, feat_prev, logits_prev, has_prev)``:
        image: uint8 ``[H, W, 3]`` RGB; feat_prev: float ``[1, D, gh, gw]`` and
        logits_prev: float ``[1, C, gh, gw]``, the previous frame's decoder features and
        plain logits on the add-on grid (pooled by ``grid_stride``; ``[1, C, h, w]`` on the model's own grid with
        ``flow_grid="model"``); has_prev: float ``[H, W]`` (1 where the
        previous frame of this stream may be used, 0 on the first frame and where the
        motion gate refuses it).
        Returns ``labels`` int64 ``[H, W]``, ``confidence`` float ``[H, W]`` in [0, 1],
        ``feat`` ``[1, D, gh, gw]`` and ``logits`` ``[1, C, gh, gw]`` (the next state: the plain logits
        pooled to the grid, unpooled with ``flow_grid="model"``; with ``fusion="memory"`` or ``"bayes"`` the
        log of the memory, :meth:`memory`); with
        :attr:`plain_logits_output` set, also the plain logits on the model's own grid ``[1, C, h, w]``
        (the point where the stateless ISS part of the graph ends: ``bench/streams_probe.py`` splits there).
    """

    def __init__(self, net: DiTTANet, frame_hw: Tuple[int, int], tau: float = DEFAULT_TAU,
                 antialias: bool = True, fusion: str = "frame", flow_grid: str = "addon"):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if flow_grid not in FLOW_GRIDS or (flow_grid != "addon" and fusion not in FLOW_FUSIONS and tau > 0):
            raise ValueError(f"flow_grid must be one of {FLOW_GRIDS} ('model' only with a fusion of {FLOW_FUSIONS} or "
                             f"tau 0), got {flow_grid!r} with fusion {fusion!r}")
        self.fusion = fusion
        self.flow_grid = flow_grid
        self.antialias = bool(antialias)
        self.channels_last = False
        self.plain_logits_output = False  # forward also returns the plain logits on the model's grid
        self.net = net.eval()
        self.iss = net.iss
        self.frame_hw = (int(frame_hw[0]), int(frame_hw[1]))
        self.input_hw = tuple(self.iss.preprocess.input_hw(self.frame_hw))
        self.tau = float(tau)
        pp = self.iss.preprocess
        self.register_buffer("mean", torch.tensor(pp.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0,
                             persistent=False)
        self.register_buffer("std", torch.tensor(pp.std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0,
                             persistent=False)
        with torch.no_grad():
            x = torch.zeros(1, 3, *self.input_hw)
            decoded = self.iss.decode(self.iss.encode(x))
            feats = self.net.addon.pool(decoded)
        # the state is the previous frame's features and plain logits on the add-on grid (pooled once,
        # when they are made: a quarter of the decoder grid's size to carry for ESPNetv2)
        state_grid = decoded.shape[2:] if flow_grid == "model" else feats.shape[2:]
        self.state_shapes = {"feat_prev": tuple(feats.shape),
                             "logits_prev": (1, self.iss.num_classes, *state_grid),
                             "has_prev": self.frame_hw}
        self.plain_logits_shape = (1, self.iss.num_classes, *decoded.shape[2:])  # the model's own grid
        self.eval()  # frozen; also what torch.onnx.export restores after exporting

    def initial_state(self):
        """Zero state with ``has_prev = 0`` (the first frame uses the plain branch), on
        the model's device and in its dtype."""
        kw = {"device": self.mean.device, "dtype": self.mean.dtype}
        return (torch.zeros(self.state_shapes["feat_prev"], **kw), torch.zeros(self.state_shapes["logits_prev"], **kw),
                torch.zeros(self.frame_hw, **kw))

    def window_reach(self) -> Tuple[float, float]:
        """``(reach_y, reach_x)`` in frame pixels: how far from a position the add-on's
        window reaches into the previous frame (radius x add-on cell size)."""
        gh, gw = self.state_shapes["feat_prev"][2:]
        r = self.net.addon.radius
        return r * self.frame_hw[0] / gh, r * self.frame_hw[1] / gw

    def use_channels_last(self, on: bool = True) -> "StreamingDiTTA":
        """Channels-last layout for the torch path on the CPU (~1.4x faster for
        ESPNetv2 with oneDNN, ``bench/iss_speed.py``); no effect on the export."""
        self.channels_last = bool(on)
        if on:
            self.net.to(memory_format=torch.channels_last)
        return self

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 ``[H, W, 3]`` -> normalised float ``[1, 3, h_in, w_in]`` (the model's dtype)."""
        x = image.permute(2, 0, 1).unsqueeze(0).float()
        if tuple(x.shape[2:]) != self.input_hw:
            x = F.interpolate(x, size=self.input_hw, mode="bilinear", align_corners=False,
                              antialias=self.antialias)
            x = x.round().clamp(0, 255)
        x = ((x - self.mean.float()) / self.std.float()).to(self.mean.dtype)
        if self.channels_last and not torch.onnx.is_in_onnx_export():
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, image, feat_prev, logits_prev, has_prev):
        _, feats, logits, frame_logits = plain_step(self.iss, self.preprocess(image), self.frame_hw)
        prob, ent = softmax_entropy(frame_logits)
        rel = normalised_reliability(ent)
        # eager torch skips the add-on when no pixel may use the previous frame (the first frame,
        # frames farther apart than max_gap): the result is the plain branch's either way
        addon_net = self.net.addon
        feats_g = addon_net.pool(feats)  # the next state
        logits_g = logits if self.flow_grid == "model" else addon_net.pool(logits)
        if self.tau > 0 and self.fusion in MEMORY_FUSIONS:  # the next state: log-probabilities on every frame
            logits_g = self.memory(logits_g, logits_prev, has_prev)
        if self.tau > 0 and (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or bool(has_prev.max() > 0.5)):
            if self.fusion == "frame":
                addon = addon_net.attend(feats_g, feat_prev, logits_prev, out_hw=feats.shape[2:])
                prob_addon, ent_addon = softmax_entropy(logits_to_frame(self.iss, addon, self.input_hw,
                                                                        self.frame_hw))
                rel_addon = normalised_reliability(ent_addon)
            else:  # grid: the add-on on its own grid; flow, memory, bayes: the moved previous logits / memory
                grid_logits = logits_prev if self.fusion in FLOW_FUSIONS else addon_net.attend(feats_g, feat_prev,
                                                                                                logits_prev)
                prob_addon, ent_addon = softmax_entropy(grid_logits)
                rel_addon = normalised_reliability(ent_addon)
                prob_addon = F.interpolate(prob_addon, size=self.frame_hw, mode="bilinear", align_corners=False)
                rel_addon = F.interpolate(rel_addon.unsqueeze(1), size=self.frame_hw, mode="bilinear",
                                          align_corners=False).squeeze(1)
            fused = self._fuse(prob, prob_addon, rel, rel_addon)
            prob = torch.where(has_prev.view(1, 1, *self.frame_hw) > 0.5, fused, prob)
        if self.plain_logits_output:
            return prob[0].argmax(0), rel[0], feats_g, logits_g, logits
        return prob[0].argmax(0), rel[0], feats_g, logits_g

    def _fuse(self, prob: torch.Tensor, prob_t: torch.Tensor, rel: torch.Tensor, rel_t: torch.Tensor) -> torch.Tensor:
        """This model's fusion of probabilities ``prob`` with the temporal branch's ``prob_t`` (``[B, C, H, W]``;
        ``rel``, ``rel_t``: their Eq. 2 reliabilities ``[B, H, W]``): Eq. 3 (:func:`~ditta_ros.addon.fuse`), or with
        ``fusion="bayes"`` the gated product (:func:`bayes_fuse`, which needs no ``rel_t``)."""
        if self.fusion == "bayes":
            return bayes_fuse(prob, prob_t, self.tau, rel)
        return fuse(prob, prob_t, self.tau, rel, rel_t)[0]

    def memory(self, logits_g: torch.Tensor, memory_prev: torch.Tensor, has_prev: torch.Tensor) -> torch.Tensor:
        """The running memory of ``fusion="memory"`` (``docs/dev_set_rule.md``, addendum 9), on the add-on grid:
        the Eq. 3 fusion (this model's ``tau``, Eq. 2 reliabilities of each side) of this frame's plain
        probabilities with the previous memory, already moved by optical flow; with ``fusion="bayes"``
        (addenda 14, 15) their renormalised product where this frame's reliability is below ``tau``
        (:func:`bayes_fuse`); where ``has_prev`` is 0 (a
        stream's first frame, beyond ``max_gap``, flow not forward-backward consistent) this frame's plain
        probabilities alone.

        Args:
            logits_g: this frame's plain logits on the grid, float ``[1, C, gh, gw]``.
            memory_prev: the previous memory as log-probabilities, float ``[1, C, gh, gw]``.
            has_prev: float ``[H, W]`` at frame size, 1 where the previous frame may be used.

        Returns:
            the memory as log-probabilities ``[1, C, gh, gw]`` (floored at ``1e-6`` before the log), what
            the next frame's temporal branch takes as its logits (a softmax gives the memory back).
        """
        prob, ent = softmax_entropy(logits_g)
        prob_mem, ent_mem = softmax_entropy(memory_prev)
        fused = self._fuse(prob, prob_mem, normalised_reliability(ent), normalised_reliability(ent_mem))
        keep = F.interpolate(has_prev.view(1, 1, *self.frame_hw), size=tuple(logits_g.shape[2:]), mode="bilinear",
                             align_corners=False) > 0.5
        return torch.log(torch.where(keep, fused, prob).clamp_min(1e-6))

    @torch.no_grad()
    def step(self, frame, state=None):
        """Torch convenience: numpy/torch uint8 frame + state -> ``(labels, confidence, state)``.

        Tensors come back on the model's device; ``state=None`` starts a stream.

        Raises:
            ValueError: the frame is not ``frame_hw`` x 3 uint8.
        """
        import numpy as np

        if not isinstance(frame, torch.Tensor):
            frame = torch.from_numpy(np.ascontiguousarray(frame))
        if tuple(frame.shape) != (*self.frame_hw, 3) or frame.dtype != torch.uint8:
            raise ValueError(f"expected a uint8 frame of {self.frame_hw[0]}x{self.frame_hw[1]}x3, "
                             f"got {tuple(frame.shape)} {frame.dtype}")
        dev = self.mean.device
        state = state if state is not None else self.initial_state()
        labels, conf, feats, logits = self(frame.to(dev), *state)
        return labels, conf, (feats, logits, torch.ones(self.frame_hw, device=dev, dtype=self.mean.dtype))


def bayes_product(prob: torch.Tensor, prob_prior: torch.Tensor) -> torch.Tensor:
    """The recursive Bayesian update of per-pixel class evidence (as semantic mapping's, SemanticFusion, McCormac
    et al. 2017): ``prob * prob_prior`` renormalised over the classes (dim 1); where the product vanishes on
    every class (both sides certain of different classes to float precision), ``prob``.

    Args:
        prob, prob_prior: float ``[B, C, H, W]`` probabilities (this frame's; the moved memory's).

    Returns:
        float ``[B, C, H, W]`` probabilities.
    """
    joint = prob * prob_prior
    total = joint.sum(1, keepdim=True)
    return torch.where(total > 0, joint / total.clamp_min(torch.finfo(total.dtype).tiny), prob)


def bayes_fuse(prob: torch.Tensor, prob_prior: torch.Tensor, tau: float, rel: torch.Tensor) -> torch.Tensor:
    """Eq. 3's gate with the Bayesian update inside (``docs/dev_set_rule.md``, addendum 15): where the plain
    branch's Eq. 2 reliability ``rel`` is below ``tau``, :func:`bayes_product` of ``prob`` and ``prob_prior``;
    elsewhere ``prob`` (a reliable frame stands, as in Eq. 3). ``tau`` >= 1 gives the product everywhere (addendum 14's
    variant; R rounds to 1 in float32 before a distribution is one-hot, so ``rel < 1`` alone would not).

    Args:
        prob, prob_prior: float ``[B, C, H, W]`` probabilities (this frame's; the moved memory's).
        tau: reliability threshold in [0, 1].
        rel: float ``[B, H, W]``, Eq. 2 reliability of ``prob``.

    Returns:
        float ``[B, C, H, W]`` probabilities.
    """
    if tau >= 1:  # everywhere, also where R rounds to 1 in float32 before the distribution is one-hot
        return bayes_product(prob, prob_prior)
    return torch.where((rel < tau).unsqueeze(1), bayes_product(prob, prob_prior), prob)


@torch.no_grad()
def two_frame_step(model: StreamingDiTTA, prev_image, image, dense: bool = False):
    """The official formulation of one evaluation step, as a reference: the clip
    ``(frame t-1, frame t)`` goes through backbone and decoder as a batch of two,
    the add-on attends from t to t-1 and the branches are fused (Eq. 1-3).

    Args:
        model: a :class:`StreamingDiTTA` (its network, sizes, tau and preprocessing).
        prev_image, image: uint8 ``[H, W, 3]`` tensors, or ``prev_image=None`` for the
            first frame (plain branch only).
        dense: use the official masked ``HW x HW`` attention (``dense_window_attention``)
            instead of the windowed one (same numbers, far more memory).

    Returns:
        ``(labels int64 [H, W], confidence float [H, W])`` -- equal to
        :meth:`StreamingDiTTA.step` on the same frames (``test/test_streaming.py``).
    """
    from .addon import dense_window_attention

    net, iss = model.net, model.iss
    x = model.preprocess(image)
    if prev_image is None:
        prob = torch.softmax(plain_step(iss, x, model.frame_hw)[3], 1)
        return prob[0].argmax(0), reliability(prob)[0]
    feats, logits = iss(torch.cat([model.preprocess(prev_image), x]))
    addon = net.addon
    if dense:
        s = addon.grid_stride
        f_t, f_p, l_p = feats[1:], feats[:1], logits[:1]
        if s > 1:
            f_t, f_p, l_p = (F.avg_pool2d(t, s, s, ceil_mode=True) for t in (f_t, f_p, l_p))
        q = addon._per_position(addon.query_layer, f_t)
        k = addon._per_position(addon.key_layer, f_p)
        out = dense_window_attention(q, k, l_p, addon.radius)
        add_logits = F.interpolate(out, size=feats.shape[2:], mode="bilinear", align_corners=False) if s > 1 else out
    else:
        add_logits = addon(feats[1:], feats[:1], logits[:1])
    p = torch.softmax(logits_to_frame(iss, logits[1:], model.input_hw, model.frame_hw), 1)
    pa = torch.softmax(logits_to_frame(iss, add_logits, model.input_hw, model.frame_hw), 1)
    prob, rel = fuse(p, pa, model.tau) if model.tau > 0 else (p, reliability(p))
    return prob[0].argmax(0), rel[0]
