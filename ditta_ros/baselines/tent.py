"""TENT (Wang et al., ICLR 2021) under W2F: entropy minimisation of the normalisation
layers' affine parameters on the warm-up frames, then frozen.

Which layers: every ``BatchNorm2d`` of ESPNetv2 (backbone and decoder); every
``LayerNorm`` and the decode head's ``BatchNorm2d`` of SegFormer. As in TENT, the
BatchNorm layers normalise with the statistics of the current input (running
statistics dropped), also after adaptation; only their affine weights and biases
(and the LayerNorms') are optimised, with Adam (lr 1e-3), one frame per step,
``iters`` passes.
"""

from __future__ import annotations

import copy
import time
from typing import Dict, List, Sequence

import numpy as np
import torch
from torch import nn

from ..inference import ISSRunner, Prediction
from ..protocol import Method


def configure_tent(model: nn.Module) -> List[nn.Parameter]:
    """Put ``model`` in TENT mode; returns the parameters to optimise (norm affines)."""
    model.train()
    params: List[nn.Parameter] = []
    for p in model.parameters():
        p.requires_grad_(False)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.track_running_stats = False
            m.running_mean = None
            m.running_var = None
        if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)) and m.weight is not None:
            m.weight.requires_grad_(True)
            m.bias.requires_grad_(True)
            params += [m.weight, m.bias]
    for m in model.modules():  # no dropout: only the normalisation changes
        if isinstance(m, nn.Dropout) or type(m).__name__.endswith("DropPath"):
            m.eval()
    return params


class TENT(Method):
    """TENT baseline (see module docstring)."""

    name = "tent"

    def __init__(self, runner: ISSRunner, lr: float = 1e-3, iters: int = 5):
        self.base = runner
        self.lr, self.iters = lr, iters
        self.runner = runner

    def adapt(self, frames: Sequence[np.ndarray]) -> Dict[str, object]:
        t0 = time.perf_counter()
        model = copy.deepcopy(self.base.model)
        params = configure_tent(model)
        opt = torch.optim.Adam(params, lr=self.lr, betas=(0.9, 0.999))
        xs = [self.base.prepare(f) for f in frames]
        first = last = float("nan")
        for it in range(self.iters):
            for x in xs:
                _, logits = model(x)
                ent = -(torch.softmax(logits, 1) * torch.log_softmax(logits, 1)).sum(1).mean()
                opt.zero_grad(set_to_none=True)
                ent.backward()
                opt.step()
                last = float(ent.detach())
                first = last if np.isnan(first) else first
        for p in model.parameters():
            p.requires_grad_(False)
        # BatchNorms keep using batch statistics in eval mode (running stats dropped)
        self.runner = ISSRunner(model, device=str(self.base.device), channels_last=self.base.channels_last)
        return {"adapt_seconds": round(time.perf_counter() - t0, 3), "losses": {"entropy_first": first,
                                                                                "entropy_last": last},
                "tent_params": int(sum(p.numel() for p in params))}

    @torch.no_grad()
    def predict(self, frame: np.ndarray) -> Prediction:
        return self.runner.predict(frame)
