"""DiTTA's temporal add-on (paper Sec. 3.1): local cross-frame attention, reliability, fusion.

* Eq. 1 -- the add-on: query ``q = f_q(F_t)``, key ``k = f_k(F_{t-1})`` (two-layer
  MLPs, Linear-ReLU-Linear of width D, applied per position), value = the
  previous frame's logits ``P_{t-1}``. Each position of frame t attends to the
  ``(2r+1)^2`` positions of frame t-1 around it (r = 5 by default) with the
  plain dot product (no ``1/sqrt(D)`` scaling, as the official code), softmax
  over the window only.
* Eq. 2 -- reliability ``R = 1 - E / max(E)`` with ``E`` the per-pixel entropy of
  the class distribution and the max taken over the frame.
* Eq. 3 -- fusion: where the plain branch is unreliable (``R_plain < tau``), the
  plain and add-on probabilities are blended with ``w = R_plain / (R_plain +
  R_addon)``.

The official code (``ditta/segformer.py``) forms the full ``HW x HW`` attention
matrix and masks it; :func:`local_window_attention` computes the same numbers
with a loop over the ``(2r+1)^2`` offsets on shifted views (no ``HW x HW``
tensor), and exports to ONNX. :func:`dense_window_attention` is the masked dense
form, kept as the test/benchmark reference.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_RADIUS = 5
DEFAULT_TAU = 0.8
#: seed of the add-on initialisation for models whose checkpoint has none (the
#: official ``tools/prepare_checkpoint.py`` uses the same default)
DEFAULT_ADDON_SEED = 5123


def _window_validity(h: int, w: int, radius: int, device, dtype=torch.bool) -> torch.Tensor:
    """``[K, h, w]`` mask, True where offset ``k`` of position (y, x) lies inside the map.

    Offsets are enumerated row-major: ``k = (dy + r) * (2r + 1) + (dx + r)``.
    """
    ones = torch.ones(1, 1, h, w, device=device)
    padded = F.pad(ones, (radius, radius, radius, radius))
    size = 2 * radius + 1
    views = [padded[0, 0, dy:dy + h, dx:dx + w] for dy in range(size) for dx in range(size)]
    return torch.stack(views, 0) > 0.5


def local_window_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           radius: int = DEFAULT_RADIUS) -> torch.Tensor:
    """Softmax attention of each position to a ``(2r+1)^2`` window of another map.

    Args:
        query: float ``[B, D, h, w]`` (frame t).
        key: float ``[B, D, h, w]`` (frame t-1).
        value: float ``[B, C, h, w]`` (frame t-1 logits).
        radius: window radius ``r`` >= 0 in feature-map cells.

    Returns:
        float ``[B, C, h, w]``: ``sum_j softmax_j(q_i . k_j) v_j`` over the
        in-bounds positions ``j`` with ``|y_i - y_j| <= r`` and ``|x_i - x_j| <= r``.
        Equal (to float rounding) to :func:`dense_window_attention`.

    Memory is ``O(K h w)`` with ``K = (2r+1)^2``, never ``O((h w)^2)``.

    Raises:
        ValueError: mismatched shapes or a negative radius.
    """
    if query.shape != key.shape or query.shape[0] != value.shape[0] or query.shape[2:] != value.shape[2:]:
        raise ValueError(f"shape mismatch: query {tuple(query.shape)}, key {tuple(key.shape)}, value {tuple(value.shape)}")
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        # the exported graph: the tiled matrix form, which OpenVINO runs faster than the per-offset
        # form (one-off measurement while writing it, not a repo benchmark); torch itself runs the
        # per-offset loop faster
        return tiled_window_attention(query, key, value, radius)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value)):
        return _WindowAttention.apply(query, key, value, radius)
    return _attention_buffers(query, key, value, radius)[0]


#: query tile edge of :func:`tiled_window_attention` (cells); 4 and 16 were slower than 8 in
#: OpenVINO on the CPU in a one-off measurement while writing it (not a repo benchmark)
TILE = 8


def _tile_indices(h: int, w: int, radius: int, tile: int, device):
    """Gather indices of each tile's key halo in the padded key map, the halo's
    validity, and the window mask of a tile. Shapes: ``[n_tiles * L]`` int64,
    ``[n_tiles, L]`` bool and ``[tile^2, L]`` bool with ``L = (tile + 2r)^2``."""
    nh, nw = -(-h // tile), -(-w // tile)
    hp, wp = nh * tile + 2 * radius, nw * tile + 2 * radius  # padded key map
    e = tile + 2 * radius
    oy = torch.arange(nh, device=device) * tile
    ox = torch.arange(nw, device=device) * tile
    hy = torch.arange(e, device=device)
    rows = (oy[:, None, None, None] + hy[None, None, :, None])  # [nh, 1, e, 1]
    cols = (ox[None, :, None, None] + hy[None, None, None, :])  # [1, nw, 1, e]
    index = (rows * wp + cols).reshape(-1)  # [nh * nw * e * e]
    inside = ((rows >= radius) & (rows < radius + h)) & ((cols >= radius) & (cols < radius + w))
    valid = inside.reshape(nh * nw, e * e)
    qy = torch.arange(tile, device=device).repeat_interleave(tile)  # query (a, b) of the tile
    qx = torch.arange(tile, device=device).repeat(tile)
    ky = hy.repeat_interleave(e)
    kx = hy.repeat(e)
    window = ((ky[None] - qy[:, None] - radius).abs() <= radius) & ((kx[None] - qx[:, None] - radius).abs() <= radius)
    return index, valid, window, (nh, nw, hp, wp)


def tiled_window_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           radius: int = DEFAULT_RADIUS, tile: int = TILE) -> torch.Tensor:
    """:func:`local_window_attention` as batched matrix products over query tiles.

    The query map is cut into ``tile x tile`` blocks; each block attends to the
    ``(tile + 2r)^2`` key positions of its halo with one matrix product, the
    ``(2r+1)^2`` window of each query and the map's border enforced by a mask. Same
    keys, same softmax, same result as the per-offset form (to float rounding,
    ``test/test_addon.py``), ~2.7x the multiply-adds at ``tile = 8`` but in three large
    matrix operations instead of ``2 (2r+1)^2`` passes over the maps: what OpenVINO
    runs fastest (torch's eager loop is faster with the per-offset form). Exports to
    ONNX (Gather, MatMul, Softmax); the export uses it.

    Args and returns: as :func:`local_window_attention`; ``tile`` >= 1 in cells.
    """
    return tiled_window_attention_nhwc(query.permute(0, 2, 3, 1), key.permute(0, 2, 3, 1),
                                       value.permute(0, 2, 3, 1), radius, tile)


def tiled_window_attention_nhwc(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                radius: int = DEFAULT_RADIUS, tile: int = TILE) -> torch.Tensor:
    """:func:`tiled_window_attention` on channels-last maps: ``query``, ``key`` float
    ``[B, h, w, D]``, ``value`` ``[B, h, w, C]`` (what the add-on's per-position MLPs
    produce); returns ``[B, C, h, w]``. The halo gather then moves whole rows of
    ``D`` values and the matrix products need no transposed copies."""
    b, h, w, d = (int(v) for v in query.shape)  # fixed shapes: constants in an exported graph
    c = int(value.shape[3])
    index, valid, window, (nh, nw, hp, wp) = _tile_indices(h, w, radius, tile, query.device)
    e2 = (tile + 2 * radius) ** 2
    pad = (0, 0, radius, wp - w - radius, radius, hp - h - radius)
    k_halo = F.pad(key, pad).reshape(b, hp * wp, d)[:, index].reshape(b, nh * nw, e2, d)
    v_halo = F.pad(value, pad).reshape(b, hp * wp, c)[:, index].reshape(b, nh * nw, e2, c)
    q = F.pad(query, (0, 0, 0, nw * tile - w, 0, nh * tile - h))
    q = q.reshape(b, nh, tile, nw, tile, d).permute(0, 1, 3, 2, 4, 5).reshape(b, nh * nw, tile * tile, d)
    scores = torch.matmul(q, k_halo.transpose(2, 3))  # [b, n_tiles, tile^2, L]
    allowed = window.unsqueeze(0) & valid.unsqueeze(1)  # [n_tiles, tile^2, L]
    # padded query rows can have no allowed key: a finite fill keeps them NaN-free (they are cut off below)
    attn = torch.softmax(scores.masked_fill(~allowed, -1e30), dim=-1)
    out = torch.matmul(attn, v_halo)  # [b, n_tiles, tile^2, c]
    out = out.reshape(b, nh, nw, tile, tile, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, nh * tile, nw * tile)
    return out[:, :, :h, :w]


def _offsets(radius: int):
    size = 2 * radius + 1
    return [(dy, dx) for dy in range(size) for dx in range(size)]


def _attention_graph(query, key, value, radius):
    """Pure-functional form (slices and adds only): what ONNX export traces."""
    _, _, h, w = query.shape
    pad = (radius, radius, radius, radius)
    key_p, value_p = F.pad(key, pad), F.pad(value, pad)
    offsets = _offsets(radius)
    valid = _window_validity(h, w, radius, query.device).unsqueeze(0)
    scores = torch.stack([(query * key_p[:, :, dy:dy + h, dx:dx + w]).sum(1) for dy, dx in offsets], 1)
    attn = torch.softmax(scores.masked_fill(~valid, float("-inf")), dim=1)
    out = attn[:, :1] * value_p[:, :, :h, :w]
    for i, (dy, dx) in enumerate(offsets[1:], 1):
        out = out + attn[:, i:i + 1] * value_p[:, :, dy:dy + h, dx:dx + w]
    return out


def _attention_buffers(query, key, value, radius):
    """Same arithmetic with reused buffers and in-place accumulation (no per-offset
    temporaries). Returns ``(out, attn)``."""
    b, _, h, w = query.shape
    pad = (radius, radius, radius, radius)
    key_p, value_p = F.pad(key, pad), F.pad(value, pad)
    offsets = _offsets(radius)
    buf = torch.empty_like(query)
    scores = query.new_empty(b, len(offsets), h, w)
    for i, (dy, dx) in enumerate(offsets):
        torch.mul(query, key_p[:, :, dy:dy + h, dx:dx + w], out=buf)
        torch.sum(buf, 1, out=scores[:, i])
    valid = _window_validity(h, w, radius, query.device).unsqueeze(0)
    attn = torch.softmax(scores.masked_fill_(~valid, float("-inf")), dim=1)
    out = torch.zeros_like(value)
    for i, (dy, dx) in enumerate(offsets):
        out.addcmul_(attn[:, i:i + 1], value_p[:, :, dy:dy + h, dx:dx + w])
    return out, attn


class _WindowAttention(torch.autograd.Function):
    """Local-window attention with a hand-written backward on shifted views: the
    autograd of the slicing form allocates a zero-filled padded tensor per offset
    and per input (compared in ``bench/addon_attention.py``, ``*_train`` rows)."""

    @staticmethod
    def forward(ctx, query, key, value, radius):
        out, attn = _attention_buffers(query, key, value, radius)
        ctx.save_for_backward(query, key, value, attn)
        ctx.radius = radius
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value, attn = ctx.saved_tensors
        r = ctx.radius
        _, _, h, w = query.shape
        pad = (r, r, r, r)
        key_p, value_p = F.pad(key, pad), F.pad(value, pad)
        offsets = _offsets(r)
        grad_out = grad_out.contiguous()
        # dL/dattn_k = <grad_out, v_shift_k> over channels
        d_attn = torch.empty_like(attn)
        vbuf = torch.empty_like(grad_out)
        for i, (dy, dx) in enumerate(offsets):
            torch.mul(grad_out, value_p[:, :, dy:dy + h, dx:dx + w], out=vbuf)
            torch.sum(vbuf, 1, out=d_attn[:, i])
        # softmax backward: dS = A * (dA - sum_k A dA)
        d_scores = attn * (d_attn - (attn * d_attn).sum(1, keepdim=True))
        gq = gk = gv = None
        if ctx.needs_input_grad[0]:
            gq = torch.zeros_like(query)
            for i, (dy, dx) in enumerate(offsets):
                gq.addcmul_(d_scores[:, i:i + 1], key_p[:, :, dy:dy + h, dx:dx + w])
        if ctx.needs_input_grad[1]:
            gk_p = torch.zeros_like(key_p)
            for i, (dy, dx) in enumerate(offsets):
                gk_p[:, :, dy:dy + h, dx:dx + w].addcmul_(d_scores[:, i:i + 1], query)
            gk = gk_p[:, :, r:r + h, r:r + w]
        if ctx.needs_input_grad[2]:
            gv_p = torch.zeros_like(value_p)
            for i, (dy, dx) in enumerate(offsets):
                gv_p[:, :, dy:dy + h, dx:dx + w].addcmul_(attn[:, i:i + 1], grad_out)
            gv = gv_p[:, :, r:r + h, r:r + w]
        return gq, gk, gv, None


def dense_window_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           radius: int = DEFAULT_RADIUS) -> torch.Tensor:
    """Reference: the official formulation, a dense ``HW x HW`` score matrix masked
    to the local window (``ditta/segformer.py`` ``local_window_mask``). Same
    arguments and result as :func:`local_window_attention`; ``O((h w)^2)`` memory,
    for tests and benchmarks only."""
    b, d, h, w = query.shape
    c = value.shape[1]
    ys = torch.arange(h, device=query.device).repeat_interleave(w)
    xs = torch.arange(w, device=query.device).repeat(h)
    mask = ((ys[:, None] - ys[None, :]).abs() <= radius) & ((xs[:, None] - xs[None, :]).abs() <= radius)
    outs = []
    for i in range(b):
        q = query[i].reshape(d, h * w).t()
        k = key[i].reshape(d, h * w).t()
        v = value[i].reshape(c, h * w).t()
        s = (q @ k.t()).masked_fill(~mask, float("-inf"))
        outs.append((torch.softmax(s, -1) @ v).t().reshape(c, h, w))
    return torch.stack(outs, 0)


def _mlp(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))


class TemporalAddon(nn.Module):
    """The DiTTA add-on (Eq. 1): query/key MLPs and local-window cross-frame attention.

    Args:
        dim: feature width ``D`` of the ISS decoder features.
        radius: attention window radius ``r`` (official default 5).
        grid_stride: the add-on runs on the decoder grid average-pooled by this
            factor (ceil mode) and its logits are resized back bilinearly
            (``align_corners=False``). 1 (default) = on the decoder grid itself, as
            the official SegFormer code (decoder at 1/4 of the input). ESPNetv2's
            decoder grid is 1/2 of the input, so its models use 2: the add-on then
            sees the same 1/4-of-input geometry (a window of r cells spans the same
            image extent as in the paper) at a quarter of the cost.
        seed: if given, parameters are re-initialised with PyTorch's default
            ``nn.Linear`` scheme (Kaiming-uniform, ``a=sqrt(5)``; uniform bias)
            drawn from a generator seeded with it, so an add-on without trained
            weights is reproducible across machines. ``None`` keeps torch's global RNG.

    Parameter names ``query_layer.{0,2}``, ``key_layer.{0,2}`` match the official
    checkpoint's ``decode_head.query_layer`` / ``decode_head.key_layer``.
    """

    def __init__(self, dim: int, radius: int = DEFAULT_RADIUS, seed: Optional[int] = DEFAULT_ADDON_SEED,
                 grid_stride: int = 1):
        super().__init__()
        self.dim = int(dim)
        self.radius = int(radius)
        if int(grid_stride) < 1:
            raise ValueError(f"grid_stride must be >= 1, got {grid_stride}")
        self.grid_stride = int(grid_stride)
        self.query_layer = _mlp(self.dim)
        self.key_layer = _mlp(self.dim)
        if seed is not None:
            self.reset_parameters(seed)

    @torch.no_grad()
    def reset_parameters(self, seed: int = DEFAULT_ADDON_SEED) -> None:
        """Seeded re-initialisation (see class docstring)."""
        gen = torch.Generator().manual_seed(int(seed))
        for lin in (self.query_layer[0], self.query_layer[2], self.key_layer[0], self.key_layer[2]):
            bound = 1.0 / lin.in_features ** 0.5  # = kaiming_uniform(a=sqrt(5)) bound for Linear
            lin.weight.copy_(torch.empty_like(lin.weight).uniform_(-bound, bound, generator=gen))
            lin.bias.copy_(torch.empty_like(lin.bias).uniform_(-bound, bound, generator=gen))

    @staticmethod
    def _per_position(mlp: nn.Module, feat: torch.Tensor) -> torch.Tensor:
        return mlp(feat.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward(self, feat_t: torch.Tensor, feat_prev: torch.Tensor, logits_prev: torch.Tensor,
                resize: bool = True) -> torch.Tensor:
        """Add-on logits for frame t.

        Args:
            feat_t: ``[B, D, h, w]`` decoder features of frame t.
            feat_prev: ``[B, D, h, w]`` decoder features of frame t-1.
            logits_prev: ``[B, C, h, w]`` plain logits of frame t-1 (the value).
            resize: resize the result back to ``h x w`` (``False``: leave it on the
                add-on grid, ``ceil(h / grid_stride) x ceil(w / grid_stride)``).

        Returns:
            ``[B, C, h, w]`` add-on logits (Eq. 1), computed on the grid pooled by
            ``grid_stride`` and resized back to ``h x w``.
        """
        hw = tuple(feat_t.shape[-2:])
        return self.attend(self.pool(feat_t), self.pool(feat_prev), self.pool(logits_prev), hw if resize else None)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, K, h, w]`` -> the add-on grid: average pooling by ``grid_stride`` (ceil mode)."""
        s = self.grid_stride
        return F.avg_pool2d(x, s, s, ceil_mode=True) if s > 1 else x

    def attend(self, feat_t: torch.Tensor, feat_prev: torch.Tensor, logits_prev: torch.Tensor,
               out_hw=None) -> torch.Tensor:
        """Eq. 1 on maps already on the add-on grid (:meth:`pool`): ``[B, C, gh, gw]``, or
        resized bilinearly (``align_corners=False``) to ``out_hw`` when given (and the
        grid is pooled). :meth:`forward` = pooling + this; the streaming model carries
        the pooled maps of the previous frame as its state."""
        s = self.grid_stride
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            # the exported graph stays channels-last from the MLPs to the tiled attention
            out = tiled_window_attention_nhwc(self.query_layer(feat_t.permute(0, 2, 3, 1)),
                                              self.key_layer(feat_prev.permute(0, 2, 3, 1)),
                                              logits_prev.permute(0, 2, 3, 1), self.radius)
        else:
            q = self._per_position(self.query_layer, feat_t)
            k = self._per_position(self.key_layer, feat_prev)
            out = local_window_attention(q, k, logits_prev, self.radius)
        if s > 1 and out_hw is not None:
            out = F.interpolate(out, size=tuple(out_hw), mode="bilinear", align_corners=False)
        return out


def make_projection_head(dim: int) -> nn.Sequential:
    """The contrastive projection head (official ``decode_head.proj_feat``): three
    1x1 convs of width ``dim`` with ReLU between; keys ``0``, ``2``, ``4``."""
    return nn.Sequential(nn.Conv2d(dim, dim, 1), nn.ReLU(), nn.Conv2d(dim, dim, 1), nn.ReLU(),
                         nn.Conv2d(dim, dim, 1))


def entropy(prob: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Shannon entropy (nats) along ``dim`` with ``0 * log 0 = 0``; NaN-free for
    probabilities in [0, 1] (``p * log(max(p, tiny))``: exportable to ONNX)."""
    return -(prob * torch.log(prob.clamp_min(torch.finfo(prob.dtype).tiny))).sum(dim)


def softmax_entropy(logits: torch.Tensor, dim: int = 1) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(softmax(logits), its entropy)`` along ``dim`` with one exponential pass and the
    logarithm taken per pixel only: ``E = log Z - sum_c p_c l'_c`` with ``l' = l - max l``
    and ``Z = sum_c exp l'_c`` (equal to :func:`entropy` of the softmax to float rounding;
    ~30 % cheaper in torch and OpenVINO than ``-sum p log p`` over all classes).

    Args:
        logits: float ``[B, C, H, W]`` (any real values).

    Returns:
        probabilities of the same shape, entropy ``[B, H, W]`` >= 0 (nats).
    """
    shifted = logits - logits.amax(dim, keepdim=True)
    e = torch.exp(shifted)
    z = e.sum(dim, keepdim=True)
    prob = e / z
    ent = torch.log(z).squeeze(dim) - (prob * shifted).sum(dim)
    return prob, ent.clamp_min(0)


def normalised_reliability(ent: torch.Tensor) -> torch.Tensor:
    """Eq. 2 from an entropy map ``[B, H, W]``: ``R = 1 - E / max(E)`` per frame (``R = 1``
    where the frame's entropy is 0 everywhere; NaN stays NaN, so a broken model's output is
    seen as non-finite downstream instead of as fully reliable)."""
    emax = ent.flatten(1).amax(1).view(-1, 1, 1)
    return torch.where(emax <= 0, torch.ones_like(ent), 1 - ent / emax.clamp_min(torch.finfo(ent.dtype).tiny))


def reliability(prob: torch.Tensor) -> torch.Tensor:
    """Reliability map of Eq. 2, ``R = 1 - E / max(E)`` per frame.

    Args:
        prob: float ``[B, C, H, W]`` class probabilities (softmax output).

    Returns:
        float ``[B, H, W]`` in [0, 1]; 1 is most reliable. A frame whose entropy is
        0 everywhere (``max(E) = 0``) gets ``R = 1`` instead of 0/0.
    """
    return normalised_reliability(entropy(prob, 1))


def fuse(prob_plain: torch.Tensor, prob_addon: torch.Tensor, tau: float = DEFAULT_TAU,
         r_plain: Optional[torch.Tensor] = None, r_addon: Optional[torch.Tensor] = None
         ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Reliability-weighted fusion of the plain and add-on branches (Eq. 3).

    Where ``R_plain < tau``: ``p = w p_plain + (1 - w) p_addon`` with
    ``w = R_plain / (R_plain + R_addon)`` (official ``fuse_and_predict``; no extra
    condition on ``R_addon``). Elsewhere ``p = p_plain``. Where both reliabilities
    are 0 the weight is 0.5 (instead of 0/0).

    Args:
        prob_plain, prob_addon: float ``[B, C, H, W]`` probabilities.
        tau: reliability threshold in [0, 1]; ``tau <= 0`` disables fusion.
        r_plain, r_addon: the branches' Eq. 2 reliabilities ``[B, H, W]`` when already
            computed (:func:`softmax_entropy` + :func:`normalised_reliability`).

    Returns:
        ``(prob, rel)``: fused probabilities ``[B, C, H, W]`` and the plain branch's
        reliability ``[B, H, W]``.
    """
    if prob_plain.shape != prob_addon.shape:
        raise ValueError(f"branch shapes differ: {tuple(prob_plain.shape)} vs {tuple(prob_addon.shape)}")
    r_plain = reliability(prob_plain) if r_plain is None else r_plain
    if tau <= 0:
        return prob_plain, r_plain
    r_addon = reliability(prob_addon) if r_addon is None else r_addon
    denom = r_plain + r_addon
    w = torch.where(denom > 0, r_plain / denom.clamp_min(torch.finfo(denom.dtype).tiny),
                    torch.full_like(denom, 0.5))
    w = torch.where(r_plain < tau, w, torch.ones_like(w)).unsqueeze(1)
    return w * prob_plain + (1 - w) * prob_addon, r_plain
