"""ESPNetv2 semantic segmentation (Mehta et al., CVPR 2019), written for ditta_ros.

Architecture as described by the paper and the upstream EdgeNets repository
(github sacmehta/EdgeNets, ``model/segmentation/espnetv2.py``): an EESP encoder
(levels 1-4, with input reinforcement at each down-sampling) and a bottom-up
decoder of efficient pyramid-pooling blocks merged with encoder skips. Module
names follow the upstream state dict so the released Cityscapes weights load
with ``strict=True``; the code itself is our own.

Contract (see :mod:`ditta_ros.iss.base`):

* ``forward(images)``: ``images`` float32 ``[B, 3, H, W]`` (RGB, /255, ImageNet
  mean/std) with ``H`` and ``W`` multiples of 16 (the encoder halves four times)
  -> ``features`` ``[B, 32 * s_dec, H/2, W/2]`` (the decoder map entering the last
  pyramid-pooling block, ``bu_dec_l4``; 32 channels for the Cityscapes models)
  and ``logits`` ``[B, 20, H/2, W/2]`` (Cityscapes trainIds 0..18 + 19
  "background").
* ``upsample_logits``: bilinear ``align_corners=True`` to the input size, as
  upstream does at the end of its ``forward``.
* parameter groups: ``backbone`` (``base_net.*``), ``decoder`` (every other
  module), ``cls_head`` (``bu_dec_l4``, the block that maps features to classes).
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import ISSModel, Preprocess

#: output channels per level for each width multiplier ``s`` (upstream config)
CHANNELS = {
    0.5: (16, 32, 64, 128),
    1.0: (32, 64, 128, 256),
    1.25: (32, 80, 160, 320),
    1.5: (32, 96, 192, 384),
    2.0: (32, 128, 256, 512),
}
#: EESP repetitions at levels 3 and 4
REPEATS = (3, 7)
#: receptive-field limit of the dilated branches per spatial level
RECEPTIVE_LIMIT = (13, 11, 9, 7, 5)
BRANCHES = 4
#: pyramid scales of the decoder's pooling blocks, in upstream order
PYRAMID_SCALES = (2.0, 1.5, 1.0, 0.5, 0.1)


class _ConvBN(nn.Module):
    """conv (no bias) -> BatchNorm -> optional PReLU; keys ``conv``, ``bn``, ``act``."""

    def __init__(self, cin, cout, k, stride=1, groups=1, dilation=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=(k - 1) // 2 * dilation,
                              dilation=dilation, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.PReLU(cout) if act else None

    def forward(self, x):
        x = self.bn(self.conv(x))
        return self.act(x) if self.act is not None else x


class _BNAct(nn.Module):
    """BatchNorm -> PReLU; keys ``bn``, ``act``."""

    def __init__(self, c):
        super().__init__()
        self.bn = nn.BatchNorm2d(c)
        self.act = nn.PReLU(c)

    def forward(self, x):
        return self.act(self.bn(x))


class _DWDilated(nn.Module):
    """Depth-wise dilated 3x3 conv; key ``conv``."""

    def __init__(self, c, stride, dilation):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=stride, padding=dilation, dilation=dilation,
                              groups=c, bias=False)

    def forward(self, x):
        return self.conv(x)


class EESP(nn.Module):
    """Extremely efficient spatial pyramid unit: grouped 1x1 reduce, ``k`` depth-wise
    dilated branches fused hierarchically, grouped 1x1 expand, residual + PReLU.

    With ``stride=2`` (inside :class:`DownSampler`) it returns the expanded map
    without residual or activation.
    """

    def __init__(self, cin, cout, stride=1, k=BRANCHES, r_lim=7):
        super().__init__()
        n = cout // k
        if n * k != cout:
            raise ValueError(f"EESP output channels {cout} must be divisible by {k}")
        self.stride = stride
        self.proj_1x1 = _ConvBN(cin, n, 1, groups=k)
        # kernel sizes 3, 5, 7, ... capped at r_lim (then back to 3), sorted ascending;
        # a k x k receptive field is a dilated 3x3 with dilation (k - 1) / 2
        ksizes = sorted(3 + 2 * i if 3 + 2 * i <= r_lim else 3 for i in range(k))
        self.spp_dw = nn.ModuleList(_DWDilated(n, stride, (ks - 1) // 2) for ks in ksizes)
        self.conv_1x1_exp = _ConvBN(cout, cout, 1, groups=k, act=False)
        self.br_after_cat = _BNAct(cout)
        self.module_act = nn.PReLU(cout)

    def forward(self, x):
        reduced = self.proj_1x1(x)
        outs = [self.spp_dw[0](reduced)]
        for branch in self.spp_dw[1:]:
            outs.append(branch(reduced) + outs[-1])  # hierarchical feature fusion
        expanded = self.conv_1x1_exp(self.br_after_cat(torch.cat(outs, 1)))
        if self.stride == 2:
            return expanded
        if expanded.shape == x.shape:
            expanded = expanded + x
        return self.module_act(expanded)


class DownSampler(nn.Module):
    """Strided EESP concatenated with 3x3 average pooling, plus the input-image
    reinforcement branch; halves the resolution."""

    def __init__(self, cin, cout, k=BRANCHES, r_lim=9, reinforce=True):
        super().__init__()
        self.eesp = EESP(cin, cout - cin, stride=2, k=k, r_lim=r_lim)
        self.inp_reinf = nn.Sequential(_ConvBN(3, 3, 3), _ConvBN(3, cout, 1, act=False)) if reinforce else None
        self.act = nn.PReLU(cout)

    def forward(self, x, image=None):
        avg = F.avg_pool2d(x, 3, stride=2, padding=1)
        out = torch.cat([avg, self.eesp(x)], 1)
        if image is not None and self.inp_reinf is not None:
            # pool the image by repeated 3x3/2 average pooling until its height
            # matches (upstream loops the same way)
            while image.shape[2] != avg.shape[2]:
                if image.shape[2] < avg.shape[2]:
                    raise ValueError("input height must be a multiple of 16 for ESPNetv2")
                image = F.avg_pool2d(image, 3, stride=2, padding=1)
            out = out + self.inp_reinf(image)
        return self.act(out)


class EESPEncoder(nn.Module):
    """Levels 1-4 of the EESPNet backbone (the classification levels 5+ are unused)."""

    def __init__(self, s: float):
        super().__init__()
        if s not in CHANNELS:
            raise ValueError(f"ESPNetv2 width multiplier s={s} not supported; choose from {sorted(CHANNELS)}")
        c = CHANNELS[s]
        self.channels = c
        self.level1 = _ConvBN(3, c[0], 3, stride=2)
        self.level2_0 = DownSampler(c[0], c[1], r_lim=RECEPTIVE_LIMIT[0])
        self.level3_0 = DownSampler(c[1], c[2], r_lim=RECEPTIVE_LIMIT[1])
        self.level3 = nn.ModuleList(EESP(c[2], c[2], r_lim=RECEPTIVE_LIMIT[2]) for _ in range(REPEATS[0]))
        self.level4_0 = DownSampler(c[2], c[3], r_lim=RECEPTIVE_LIMIT[2])
        self.level4 = nn.ModuleList(EESP(c[3], c[3], r_lim=RECEPTIVE_LIMIT[3]) for _ in range(REPEATS[1]))

    def forward(self, image):
        l1 = self.level1(image)
        l2 = self.level2_0(l1, image)
        l3 = self.level3_0(l2, image)
        for block in self.level3:
            l3 = block(l3)
        l4 = self.level4_0(l3, image)
        for block in self.level4:
            l4 = block(l4)
        return l1, l2, l3, l4


class _ChannelShuffle(nn.Module):
    def __init__(self, groups):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        b, c, h, w = x.shape
        return x.view(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class _BRSeq(nn.Module):
    """BatchNorm -> PReLU with keys ``br.0`` / ``br.1`` (upstream ``cnn_utils.BR``)."""

    def __init__(self, c):
        super().__init__()
        self.br = nn.Sequential(nn.BatchNorm2d(c), nn.PReLU(c))

    def forward(self, x):
        return self.br(x)


class _CBRSeq(nn.Module):
    """conv -> BN -> PReLU with keys ``cbr.0/1/2`` (upstream ``cnn_utils.CBR``)."""

    def __init__(self, cin, cout, k, groups=1):
        super().__init__()
        self.cbr = nn.Sequential(nn.Conv2d(cin, cout, k, padding=(k - 1) // 2, groups=groups, bias=False),
                                 nn.BatchNorm2d(cout), nn.PReLU(cout))

    def forward(self, x):
        return self.cbr(x)


def _pool_matrix(n_in: int, n_out: int, dtype, device) -> torch.Tensor:
    """``[n_out, n_in]`` averaging matrix of PyTorch's adaptive pooling bins
    (``floor(i * n_in / n_out)`` .. ``ceil((i + 1) * n_in / n_out)``)."""
    import numpy as np

    m = np.zeros((n_out, n_in), dtype=np.float32)  # built outside torch: one constant in the traced graph
    for i in range(n_out):
        a, b = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
        m[i, a:b] = 1.0 / (b - a)
    return torch.from_numpy(m).to(device=device, dtype=dtype)


def _pool_axis(x: torch.Tensor, dim: int, n_out: int) -> torch.Tensor:
    """Adaptive average pooling of ``x`` along ``dim`` (2 or 3) to ``n_out`` bins, in
    the cheapest exact ONNX form: where every bin has the same size ``k`` (the
    pyramid's 2x and 1.5x branches pooled back to the map size), a ``k``-wide
    average pool with stride 1 and a gather of the bin starts (a plain strided pool
    when the starts are evenly spaced); otherwise a constant averaging matrix."""
    n_in = int(x.shape[dim])
    if n_in == n_out:
        return x
    starts = [(i * n_in) // n_out for i in range(n_out)]
    sizes = {-(-((i + 1) * n_in) // n_out) - starts[i] for i in range(n_out)}
    if len(sizes) == 1:
        k = sizes.pop()
        steps = {b - a for a, b in zip(starts, starts[1:])}
        stride = steps.pop() if len(steps) == 1 else 1
        kernel, strides = ((k, 1), (stride, 1)) if dim == 2 else ((1, k), (1, stride))
        y = F.avg_pool2d(x, kernel, strides)
        if stride == 1 and int(y.shape[dim]) != n_out:
            y = torch.index_select(y, dim, torch.tensor(starts, dtype=torch.long, device=x.device))
        return y
    m = _pool_matrix(n_in, n_out, x.dtype, x.device)
    return m @ x if dim == 2 else x @ m.t()


def adaptive_avg_pool2d(x: torch.Tensor, size) -> torch.Tensor:
    """``F.adaptive_avg_pool2d``; while exporting to ONNX (which has no adaptive
    pooling for non-divisible sizes) the same bins per axis by :func:`_pool_axis`:
    average pools where the bins are uniform, constant matrix products elsewhere
    (``test/test_espnetv2.py``)."""
    if not (torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()):
        return F.adaptive_avg_pool2d(x, size)
    return _pool_axis(_pool_axis(x, 2, int(size[0])), 3, int(size[1]))


class PyramidPool(nn.Module):
    """Efficient pyramid pooling: project, depth-wise 3x3 at five scales, shuffle,
    merge; the last block of the decoder (``last=True``) ends in a biased 1x1
    classifier and has no trailing BN/PReLU."""

    def __init__(self, cin, proj, cout, last=False):
        super().__init__()
        self.scales = PYRAMID_SCALES
        self.projection_layer = _CBRSeq(cin, proj, 1)
        self.stages = nn.ModuleList(nn.Conv2d(proj, proj, 3, padding=1, groups=proj, bias=False)
                                    for _ in self.scales)
        self.merge_layer = nn.Sequential(
            _BRSeq(proj * len(self.scales)),
            _ChannelShuffle(len(self.scales)),
            _CBRSeq(proj * len(self.scales), proj, 3, groups=proj),
            nn.Conv2d(proj, cout, 1, bias=last),
        )
        self.br = None if last else _BRSeq(cout)

    def forward(self, x):
        x = self.projection_layer(x)
        h, w = x.shape[2:]
        pyramid = []
        for scale, stage in zip(self.scales, self.stages):
            hs, ws = max(int(math.ceil(h * scale)), 5), max(int(math.ceil(w * scale)), 5)
            if scale < 1.0:
                y = stage(adaptive_avg_pool2d(x, (hs, ws)))
                y = F.interpolate(y, (h, w), mode="bilinear", align_corners=True)
            elif scale > 1.0:
                y = stage(F.interpolate(x, (hs, ws), mode="bilinear", align_corners=True))
                y = adaptive_avg_pool2d(y, (h, w))
            else:
                y = stage(x)
            pyramid.append(y)
        out = self.merge_layer(torch.cat(pyramid, 1))
        return self.br(out) if self.br is not None else out


class _SkipProjection(nn.Module):
    """Encoder skip projected to decoder width, gated by a global-context sigmoid
    (upstream ``EfficientPWConv``)."""

    def __init__(self, cin, cout):
        super().__init__()
        self.wt_layer = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.Sigmoid())
        self.expansion_layer = _CBRSeq(cin, cout, 3, groups=math.gcd(cin, cout))

    def forward(self, x):
        return self.expansion_layer(x) * self.wt_layer(x)


class ESPNetv2Seg(ISSModel):
    """ESPNetv2 segmentation network behind the ISS interface.

    Args:
        s: width multiplier (0.5, 1.0, 1.25, 1.5, 2.0).
        num_classes: output classes (20 for the Cityscapes release).
        input_size: ``(width, height)`` the weights were trained at; frames are
            resized to it (PIL bilinear, as the reference evaluation does).
        decoder_base: base decoder width (16 for Cityscapes/VOC, 32 for COCO).
    """

    family = "espnetv2"
    upsample_align_corners = True
    addon_grid_stride = 2  # decoder grid is 1/2 of the input; the add-on runs at 1/4 (paper geometry)

    def __init__(self, s: float = 2.0, num_classes: int = 20, input_size=(1024, 512), decoder_base: int = 16):
        super().__init__()
        self.s = float(s)
        self.num_classes = int(num_classes)
        self.base_net = EESPEncoder(self.s)
        c = self.base_net.channels
        dec = (4 * decoder_base, 3 * decoder_base, 2 * decoder_base)
        proj = min(num_classes // 2, decoder_base)
        self.bu_dec_l1 = PyramidPool(c[3], proj, dec[0])
        self.bu_dec_l2 = PyramidPool(dec[0], proj, dec[1])
        self.bu_dec_l3 = PyramidPool(dec[1], proj, dec[2])
        self.bu_dec_l4 = PyramidPool(dec[2], proj, num_classes, last=True)
        self.merge_enc_dec_l2 = _SkipProjection(c[2], dec[0])
        self.merge_enc_dec_l3 = _SkipProjection(c[1], dec[1])
        self.merge_enc_dec_l4 = _SkipProjection(c[0], dec[2])
        self.bu_br_l2 = nn.Sequential(nn.BatchNorm2d(dec[0]), nn.PReLU(dec[0]))
        self.bu_br_l3 = nn.Sequential(nn.BatchNorm2d(dec[1]), nn.PReLU(dec[1]))
        self.bu_br_l4 = nn.Sequential(nn.BatchNorm2d(dec[2]), nn.PReLU(dec[2]))
        self.feature_dim = dec[2]
        self.preprocess = Preprocess(mode="fixed", size=tuple(input_size), resize="pil")

    @staticmethod
    def _up2(x):
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)

    def encode(self, images: torch.Tensor):
        """Backbone outputs ``(l1, l2, l3, l4)`` at 1/2 .. 1/16 resolution."""
        if images.shape[2] % 16 or images.shape[3] % 16:
            raise ValueError(f"ESPNetv2 input height and width must be multiples of 16, got {tuple(images.shape[2:])}")
        return self.base_net(images)

    def decode(self, encoded) -> torch.Tensor:
        """Decoder features ``[B, D, H/2, W/2]`` (the input of ``bu_dec_l4``) from :meth:`encode`."""
        l1, l2, l3, l4 = encoded
        x = self.bu_dec_l1(l4)
        x = self.bu_dec_l2(self.bu_br_l2(self._up2(x) + self.merge_enc_dec_l2(l3)))
        x = self.bu_dec_l3(self.bu_br_l3(self._up2(x) + self.merge_enc_dec_l3(l2)))
        return self.bu_br_l4(self._up2(x) + self.merge_enc_dec_l4(l1))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.bu_dec_l4(features)

    def param_groups(self) -> Dict[str, List[nn.Parameter]]:
        backbone = list(self.base_net.parameters())
        ids = {id(p) for p in backbone}
        return {
            "backbone": backbone,
            "decoder": [p for p in self.parameters() if id(p) not in ids],
            "cls_head": list(self.bu_dec_l4.parameters()),
        }


def load_espnetv2(path: str, s: float, input_size: Sequence[int], num_classes: int = 20) -> ESPNetv2Seg:
    """Build :class:`ESPNetv2Seg` and load an upstream state dict with ``strict=True``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        RuntimeError: the state dict does not match (missing/unexpected keys or shapes),
            with the offending keys named.
    """
    import os

    if not os.path.isfile(path):
        raise FileNotFoundError(f"ESPNetv2 weights not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}
    model = ESPNetv2Seg(s=s, num_classes=num_classes, input_size=tuple(input_size))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise RuntimeError(f"{path} does not match ESPNetv2 s={s} with {num_classes} classes: {err}") from None
    return model.eval()
