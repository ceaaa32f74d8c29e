"""The DiTTA method under the W2F protocol: warm-up -> teacher targets -> adaptation ->
frozen streaming inference with the add-on and reliability fusion (Eq. 1-8).

Streaming: each frame's backbone runs once; the previous frame's decoder
features and plain logits are carried as state (the official code runs the
backbone on both frames of the clip every step; in eval mode the numbers are the
same). The first evaluation frame attends to the last warm-up frame, as the
official two-frame clip does; with the full-video protocol frame 0 has no
previous frame and uses the plain branch only.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from .adapt import AdaptConfig, DiTTANet, adapt
from .addon import DEFAULT_TAU
from .inference import ISSRunner, Prediction
from .iss.base import logits_to_frame
from .streaming import StreamingDiTTA
from .protocol import Method
from .teacher.propagator import Propagator
from .teacher.targets import TargetConfig, Targets, build_targets, cache_key

log = logging.getLogger("ditta.method")


class DiTTAMethod(Method):
    """DiTTA under W2F.

    Args:
        runner: the ISS runner (its model is the pre-trained model; never modified).
        teacher: a zero-argument factory returning a fresh :class:`Propagator` per clip
            (see :func:`ditta_ros.teacher.make_teacher`).
        target_cfg, adapt_cfg: hyper-parameters (paper/official defaults).
        tau: reliability threshold of the Eq. 3 fusion at inference.
        cache_dir: if set, distillation targets are stored/reused there, keyed by
            ``cache_tag``, the warm-up length, the target config and the teacher.
        progress: tqdm progress bars for the teacher and the adaptation.
        save_adapted: if set, the adapted weights are saved there (``ditta export --adapted``).

    ``adapt`` returns, for result.json: ``adapt_seconds`` (all of the warm-up
    work), ``teacher_seconds``, ``tta_seconds``, ``losses`` (last step, plus
    ``first_total``), ``targets`` (objects, covered pixel fraction) and ``hyper``.
    ``predict`` raises ``RuntimeError`` before ``adapt``.
    """

    name = "ditta"

    def __init__(self, runner: ISSRunner, teacher, target_cfg: TargetConfig = TargetConfig(),
                 adapt_cfg: AdaptConfig = AdaptConfig(), tau: float = DEFAULT_TAU, cache_dir: Optional[str] = None,
                 cache_tag: str = "", progress: bool = True, save_adapted: Optional[str] = None):
        self.runner = runner
        self.teacher = teacher
        self.target_cfg = target_cfg
        self.adapt_cfg = adapt_cfg
        self.tau = tau
        self.cache_dir = cache_dir
        self.cache_tag = cache_tag
        self.progress = progress
        self.save_adapted = save_adapted
        self.net: Optional[DiTTANet] = None
        self._last_warm: Optional[np.ndarray] = None
        self._state = None
        self._stream: Optional[StreamingDiTTA] = None

    def iss_warmup(self, frames: Sequence[np.ndarray]):
        """Frozen ISS on the warm-up frames (step 1 of the method).

        Args:
            frames: ``T`` uint8 RGB ``[H, W, 3]`` frames.

        Returns:
            ``(encoded, input_hw, preds, rels)``: per frame the frozen backbone's outputs
            (kept for adaptation), the network input ``(h, w)``, int64 ``[H, W]`` ISS
            predictions and float32 ``[H, W]`` Eq. 2 reliabilities at frame size.
        """
        from .addon import reliability

        model = self.runner.model
        encoded, preds, rels = [], [], []
        with torch.no_grad():
            for f in frames:
                x = self.runner.prepare(f)
                enc = model.encode(x)
                logits = model.classify(model.decode(enc))
                prob = torch.softmax(logits_to_frame(model, logits, x.shape[2:], f.shape[:2]), 1)
                encoded.append(tuple(e.detach() for e in enc))
                preds.append(prob[0].argmax(0).numpy().astype(np.int64))
                rels.append(reliability(prob)[0].numpy())
        return encoded, tuple(x.shape[2:]), preds, rels

    def adapt(self, frames: Sequence[np.ndarray]) -> Dict[str, object]:
        from tqdm import tqdm

        t0 = time.perf_counter()
        encoded, input_hw, preds, rels = self.iss_warmup(frames)
        n = len(frames)
        targets: Optional[Targets] = None
        path = None
        if self.cache_dir:
            key = cache_key(self.cache_tag, n, asdict(self.target_cfg), getattr(self.teacher, "describe", ""))
            path = os.path.join(self.cache_dir, f"targets_{key}.npz")
            if os.path.isfile(path):
                targets = Targets.load(path)
                log.info("distillation targets loaded from %s", path)
        teacher_s = 0.0
        if targets is None:
            prop: Propagator = self.teacher()
            with tqdm(total=2 * n, desc="teacher", disable=not self.progress, unit="frame") as bar:
                targets = build_targets(prop, frames, preds, rels, self.runner.model.num_classes, self.target_cfg, bar)
            teacher_s = targets.stats.get("teacher_seconds", 0.0)
            if path:
                targets.save(path)
        labels = [targets.label(t, preds[t]) for t in range(n)]
        t1 = time.perf_counter()
        with tqdm(total=self.adapt_cfg.iters * n, desc="adapt", disable=not self.progress, unit="step") as bar:
            self.net, losses = adapt(DiTTANet(self.runner.model), encoded, input_hw, labels, targets.obj_maps,
                                     self.adapt_cfg, bar)
        adapt_only = time.perf_counter() - t1
        self._last_warm = frames[-1]
        self._stream = None  # rebuilt on the adapted network
        if self.save_adapted:
            from .export import save_adapted

            save_adapted(self.net, self.save_adapted, {"warmup_frames": n, "losses": losses,
                                                       "adapt": asdict(self.adapt_cfg)})
        return {"adapt_seconds": round(time.perf_counter() - t0, 3), "teacher_seconds": round(teacher_s, 3),
                "tta_seconds": round(adapt_only, 3), "losses": losses,
                "targets": {k: v for k, v in targets.stats.items() if k != "teacher_seconds"},
                "hyper": {"target": asdict(self.target_cfg), "adapt": asdict(self.adapt_cfg), "tau": self.tau}}

    def start_stream(self, eval_frames=None) -> None:
        self._state = None
        if self._last_warm is not None:
            self._step(self._last_warm)

    def streaming_model(self, frame_hw) -> StreamingDiTTA:
        """The frozen streaming model (:class:`StreamingDiTTA`, torch, channels-last on
        the CPU) for frames of ``frame_hw``; rebuilt when the size changes."""
        if self.net is None:
            raise RuntimeError("DiTTA predicts only after adapt()")
        if self._stream is None or self._stream.frame_hw != tuple(frame_hw):
            self._stream = StreamingDiTTA(self.net, tuple(frame_hw), self.tau)
            if self.runner.channels_last:
                self._stream.use_channels_last()
            self._state = None
        return self._stream

    def _step(self, frame: np.ndarray) -> Prediction:
        model = self.streaming_model(frame.shape[:2])
        labels, conf, self._state = model.step(frame, self._state)
        dtype = np.uint8 if self.net.iss.num_classes <= 255 else np.int16
        return Prediction(labels.cpu().numpy().astype(dtype), conf.float().cpu().numpy())

    def predict(self, frame: np.ndarray) -> Prediction:
        return self._step(frame)
