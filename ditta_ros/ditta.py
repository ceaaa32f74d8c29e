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

import copy
import logging
import os
import time
from dataclasses import asdict
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .adapt import DiTTANet, adapt
from .guard import GuardVerdict, check
from .inference import ISSRunner, Prediction
from .iss.base import plain_step
from .presets import DEFAULT_PRESET, DittaConfig
from .protocol import Method
from .runtime import FrozenDiTTA, RuntimeOptions, ServedISS
from .runtime.serving import StreamStats
from .teacher.propagator import Propagator
from .teacher.targets import Targets, build_targets, cache_key, target_report
from .teacher.temporal import temporal_vote

log = logging.getLogger("ditta.method")


class AdaptationCancelled(RuntimeError):
    """Raised inside :meth:`DiTTAMethod.adapt` once its ``stop`` event is set (a reset, a shutdown)."""


class _StopCheck:
    """A progress bar whose ``update`` raises :class:`AdaptationCancelled` once ``stop`` is set
    (the teacher and the adaptation loop report every frame and step through it)."""

    def __init__(self, bar, stop):
        self._bar, self._stop = bar, stop

    def update(self, n=1):
        if self._stop is not None and self._stop.is_set():
            raise AdaptationCancelled("adaptation cancelled")
        return self._bar.update(n)

    def __getattr__(self, name):
        return getattr(self._bar, name)

class DiTTAMethod(Method):
    """DiTTA under W2F.

    Args:
        runner: the ISS runner (its model is the pre-trained model; never modified).
        teacher: a zero-argument factory returning a fresh :class:`Propagator` per clip
            (see :func:`ditta_ros.teacher.make_teacher`).
        config: the hyper-parameters (:class:`~ditta_ros.presets.DittaConfig`; ``None``: the
            :data:`~ditta_ros.presets.DEFAULT_PRESET`): targets, adaptation, guard (a refused adaptation is not
            served, the frozen ISS is), ``tau``, the fusion gates (``max_gap``: seconds;
            when > 0 and :attr:`frame_interval` is known and larger, the add-on is not fused,
            the plain, adapted branch serves), ``fusion``, ``addon_stride``.
        runtime: where the frozen streaming model runs for the guard and the evaluation
            (:class:`~ditta_ros.runtime.RuntimeOptions`; ``None``: torch on the CPU).
        cache_dir: if set, distillation targets are stored/reused there, keyed by
            ``cache_tag``, the warm-up length, the target config and the teacher.
        progress: tqdm progress bars for the teacher and the adaptation.
        save_adapted: if set, the adapted weights are saved there (``ditta export --adapted``).
        stop: a ``threading.Event``; once set, :meth:`adapt` raises
            :class:`AdaptationCancelled` at its next frame or step (the live pipeline's reset
            and shutdown).

    ``adapt`` returns, for result.json: ``adapt_seconds`` (all of the warm-up
    work), ``teacher_seconds``, ``tta_seconds``, ``guard_seconds``, ``losses`` (last
    step, plus ``first_total``), ``targets`` (objects, covered pixel fraction),
    ``target_report`` (label-free, :func:`~ditta_ros.teacher.targets.target_report`),
    ``guard`` (the verdict) and ``hyper``. ``predict`` raises ``RuntimeError`` before ``adapt``.
    """

    name = "ditta"

    def __init__(self, runner: ISSRunner, teacher, config: Optional[DittaConfig] = None,
                 runtime: Optional[RuntimeOptions] = None, cache_dir: Optional[str] = None, cache_tag: str = "",
                 progress: bool = True, save_adapted: Optional[str] = None, stop=None):
        self.runner = runner
        self.teacher = teacher
        self.config = config if config is not None else DittaConfig.from_preset(DEFAULT_PRESET)
        self.runtime = runtime if runtime is not None else RuntimeOptions()
        self.cache_dir = cache_dir
        self.cache_tag = cache_tag
        self.progress = progress
        self.save_adapted = save_adapted
        self.stop = stop
        self.verdict: Optional[GuardVerdict] = None
        self.net: Optional[DiTTANet] = None
        self.frozen: Optional[FrozenDiTTA] = None  # the adapted network, frozen for serving
        self._last_warm: Optional[np.ndarray] = None

    def _check_stop(self) -> None:
        if self.stop is not None and self.stop.is_set():
            raise AdaptationCancelled("adaptation cancelled")

    def iss_warmup(self, frames: Sequence[np.ndarray], known: Optional[Sequence[Prediction]] = None):
        """Frozen ISS on the warm-up frames (step 1 of the method).

        Args:
            frames: ``T`` uint8 RGB ``[H, W, 3]`` frames.
            known: the ISS predictions of these frames when the caller already has them
                (the live pipeline serves the warm-up frames with the ISS model): then only
                the backbone runs here.

        Returns:
            ``(encoded, input_hw, preds, rels)``: per frame the frozen backbone's outputs
            (kept for adaptation), the network input ``(h, w)``, int64 ``[H, W]`` ISS
            predictions and float32 ``[H, W]`` Eq. 2 reliabilities at frame size.

        Raises:
            ValueError: ``known`` does not hold one prediction of each frame's size per frame.
        """
        from .addon import reliability

        if known is not None and (len(known) != len(frames)
                                  or any(p.labels.shape != f.shape[:2] for p, f in zip(known, frames))):
            raise ValueError("known ISS predictions must match the warm-up frames one to one, at frame size")
        model = self.runner.model
        encoded, preds, rels = [], [], []
        with torch.no_grad():
            for t, f in enumerate(frames):
                self._check_stop()
                x = self.runner.prepare(f)
                if known is not None:
                    encoded.append(tuple(e.detach() for e in model.encode(x)))
                    preds.append(known[t].labels.astype(np.int64))
                    rels.append(np.asarray(known[t].confidence, np.float32))
                    continue
                enc, _, _, frame_logits = plain_step(model, x, f.shape[:2])
                prob = torch.softmax(frame_logits, 1)
                encoded.append(tuple(e.detach() for e in enc))
                preds.append(prob[0].argmax(0).numpy().astype(np.int64))
                rels.append(reliability(prob)[0].numpy())
        return encoded, tuple(x.shape[2:]), preds, rels

    def make_targets(self, frames: Sequence[np.ndarray], preds, rels, target_cfg=None):
        """Distillation targets of the warm-up frames (the teacher, cached when ``cache_dir``), built
        with ``target_cfg`` (``None``: this method's). With its ``temporal_vote``, the teacher and the
        builder get the ISS labels and reliabilities voted across the warm-up frames within
        :meth:`~ditta_ros.presets.DittaConfig.fusion_limit` of :attr:`frame_interval`
        (:func:`~ditta_ros.teacher.temporal.temporal_vote`).

        Returns:
            ``(labels, obj_maps, stats, report, teacher_seconds)``: per frame int64 ``[H, W]``
            labels and int ``[H, W]`` object ids, the builder's stats and target report (its
            ``changed`` against ``preds``; with the vote, ``voted``: the share of pixels it changed).
        """
        from tqdm import tqdm

        n = len(frames)
        target_cfg = self.config.target if target_cfg is None else target_cfg
        keyed = asdict(target_cfg)
        keyed.pop("temporal_vote")  # the cache keys of targets built before the option existed stay valid
        iss_preds, voted = preds, None
        if target_cfg.temporal_vote:
            limit = self.config.fusion_limit(self.frame_interval)
            vp, vr = temporal_vote(frames, preds, rels, self.frame_interval, limit)
            voted = float(np.mean([(a != b).mean() for a, b in zip(vp, iss_preds)]))
            log.info("temporal vote of the warm-up's ISS labels (%d frames %.3f s apart, limit %.2f s): "
                     "%.2f %% of the pixels changed", n, self.frame_interval or 0.0, limit, 100 * voted)
            if voted > 0 or any(not np.array_equal(a, b) for a, b in zip(vr, rels)):  # else the same inputs
                keyed.update(temporal_vote=True, interval=self.frame_interval, limit=limit)
            preds, rels = vp, vr
        targets: Optional[Targets] = None
        path = None
        if self.cache_dir:
            key = cache_key(self.cache_tag, n, keyed, getattr(self.teacher, "describe", ""))
            path = os.path.join(self.cache_dir, f"targets_{key}.npz")
            if os.path.isfile(path):
                targets = Targets.load(path)
                log.info("distillation targets loaded from %s", path)
        teacher_s = 0.0
        if targets is None:
            prop: Propagator = self.teacher()
            with tqdm(total=2 * n, desc="teacher", disable=not self.progress, unit="frame") as bar:
                targets = build_targets(prop, frames, preds, rels, self.runner.model.num_classes, target_cfg,
                                        _StopCheck(bar, self.stop))
            teacher_s = targets.stats.get("teacher_seconds", 0.0)
            if path:
                targets.save(path)
        labels = [targets.label(t, preds[t]) for t in range(n)]
        report = targets.report or target_report(labels, preds, self.runner.model.num_classes,
                                                 len(targets.obj_class), {}, teacher_s)
        if voted is not None:  # "changed" is against the frame-wise ISS, not the voted labels
            report = dict(target_report(labels, iss_preds, self.runner.model.num_classes, report["objects_kept"],
                                        report["objects_dropped"], report["teacher_seconds"]), voted=voted)
        stats = {k: v for k, v in targets.stats.items() if k != "teacher_seconds"}
        return labels, targets.obj_maps, stats, report, teacher_s

    def adapt(self, frames: Sequence[np.ndarray], iss_preds: Optional[Sequence[Prediction]] = None,
              incumbent: Optional[DiTTANet] = None) -> Dict[str, object]:
        """Warm-up: ISS, teacher targets, adaptation, guard (``iss_preds``: the ISS predictions
        of ``frames`` when known, :meth:`iss_warmup`).

        With :attr:`~ditta_ros.presets.DittaConfig.candidates`, each candidate adapts on the frames
        not held out and one (or none) is chosen label-free (:meth:`select`); ``incumbent`` (the
        network serving now, a re-adaptation) is judged beside them there. Without candidates it is
        not used.

        Raises:
            AdaptationCancelled: :attr:`stop` was set.
        """
        if self.config.candidates:
            return self.select(frames, iss_preds, incumbent)
        t0 = time.perf_counter()
        encoded, input_hw, preds, rels = self.iss_warmup(frames, iss_preds)
        n = len(frames)
        labels, obj_maps, stats, report, teacher_s = self.make_targets(frames, preds, rels)
        log.info("targets: %.1f%% of the warm-up pixels differ from the ISS, %s objects kept, dropped %s",
                 100 * report.get("changed", 0.0), report.get("objects_kept"), report.get("objects_dropped"))
        t1 = time.perf_counter()
        self._check_stop()
        self.net, losses = self._train(self.config, encoded, input_hw, labels, obj_maps)
        adapt_only = time.perf_counter() - t1
        self.frozen = self.freeze()
        self._check_stop()
        t2 = time.perf_counter()
        self.verdict = self.guard(frames, preds, rels)
        guard_s = time.perf_counter() - t2
        if self.verdict.refused:
            log.warning("adaptation refused by the do-no-harm guard (%s); serving the ISS model",
                        "; ".join(self.verdict.reasons))
        self._last_warm = frames[-1]
        if self.save_adapted:
            from .checkpoint import save_adapted

            save_adapted(self.net, self.save_adapted, {"warmup_frames": n, "losses": losses,
                                                       "adapt": asdict(self.config.adapt)})
        return {"adapt_seconds": round(time.perf_counter() - t0, 3), "teacher_seconds": round(teacher_s, 3),
                "tta_seconds": round(adapt_only, 3), "guard_seconds": round(guard_s, 3), "losses": losses,
                "targets": stats, "target_report": report, "guard": self.verdict.as_dict(),
                "hyper": self.config.hyper(self.runtime)}

    def freeze(self) -> FrozenDiTTA:
        """The adapted network frozen for serving (:class:`FrozenDiTTA`) with this method's
        tau, fusion, gates and runtime.

        Raises:
            RuntimeError: no network (before :meth:`adapt`).
        """
        if self.net is None:
            raise RuntimeError("DiTTA predicts only after adapt()")
        return FrozenDiTTA(self.net, self.config, self.runtime, trained_gap=self.frame_interval)

    def guard(self, frames: Sequence[np.ndarray], preds, rels) -> GuardVerdict:
        """Run the adapted streaming model over the warm-up frames (fresh state) and
        check it against the frozen ISS (:func:`ditta_ros.guard.check`)."""
        return check(self._stream_labels(self.frozen, frames), preds, rels, self.config.guard)

    def _stream_labels(self, frozen: FrozenDiTTA, frames: Sequence[np.ndarray]) -> List[np.ndarray]:
        """Labels of ``frozen`` over ``frames`` streamed in order with a fresh state (then reset)."""
        frozen.reset()
        with torch.inference_mode():
            labels = [frozen.step(f, self.frame_interval).labels for f in frames]
        frozen.reset()
        return labels

    def _train(self, config: DittaConfig, encoded, input_hw, labels, obj_maps):
        """``(net, losses)``: a fresh :class:`DiTTANet` adapted with ``config`` (Eq. 5-8); not trained
        (empty ``losses``) when nothing it would train is served
        (:attr:`~ditta_ros.presets.DittaConfig.trains_nothing_served`)."""
        from tqdm import tqdm

        if config.trains_nothing_served:
            log.info("%s: only the add-on would adapt and the served graph does not use it: nothing to train",
                     config.preset)
            return DiTTANet(copy.deepcopy(self.runner.model), grid_stride=config.addon_stride).eval(), {}

        with tqdm(total=config.adapt.iters * len(labels), desc=f"adapt {config.preset}", disable=not self.progress,
                  unit="step") as bar:
            return adapt(DiTTANet(self.runner.model, grid_stride=config.addon_stride), encoded, input_hw, labels,
                         obj_maps, config.adapt, _StopCheck(bar, self.stop))

    def select(self, frames: Sequence[np.ndarray], iss_preds: Optional[Sequence[Prediction]] = None,
               incumbent: Optional[DiTTANet] = None) -> Dict[str, object]:
        """The warm-up with candidate adaptations (``docs/dev_set_rule.md``, addendum 4): the ISS, then
        per candidate its targets (the teacher runs once per target configuration) and its adaptation
        on the frames not held out, its warm-up stream, guard verdict and held-out gain; the chosen
        candidate serves (:func:`ditta_ros.selector.choose`), or the ISS when none is admissible. With the
        flow branch a candidate is judged on its plain branch and served with the flow branch
        (:attr:`~ditta_ros.presets.DittaConfig.judged`, addendum 8).

        ``incumbent`` (a re-adaptation: the adapted network serving now, trained on earlier frames) is
        judged the same way on these frames, with no training, as the candidate
        :data:`~ditta_ros.selector.INCUMBENT` placed first (ties keep it): the serving model stays
        until a better one passes, and gives way to the ISS when it is no longer admissible.

        Returns:
            as :meth:`adapt`, the chosen candidate's ``losses`` and ``guard``, plus ``selection``
            (:func:`ditta_ros.selector.report`).

        Raises:
            AdaptationCancelled: :attr:`stop` was set.
        """
        from . import selector

        t0 = time.perf_counter()
        encoded, input_hw, preds, rels = self.iss_warmup(frames, iss_preds)
        train, held = selector.holdout(len(frames))
        # the ISS on the candidates' own streaming path (plain graph): preprocessing differences cancel
        served_iss = ServedISS(self.runner, self.runtime)
        iss_streamed = [served_iss.predict(f).labels for f in frames]
        candidates = self.config.candidate_configs()
        targets = {}  # per target configuration: (labels, objects, stats, report); the reference first
        teacher_s, evidence, made = 0.0, {}, {}
        for cfg in [self.config] + [c for _, c in candidates]:
            if repr(cfg.target) not in targets:
                labels, objs, stats, report, secs = self.make_targets(frames, preds, rels, cfg.target)
                targets[repr(cfg.target)], teacher_s = (labels, objs, stats, report), teacher_s + secs
        reference, _, stats, report = targets[repr(self.config.target)]
        for name, cfg in candidates:
            labels, objs = targets[repr(cfg.target)][:2]
            self._check_stop()
            t1 = time.perf_counter()
            net, losses = self._train(cfg, [encoded[t] for t in train], input_hw, [labels[t] for t in train],
                                      [objs[t] for t in train])
            frozen = FrozenDiTTA(net, cfg.judged, self.runtime, trained_gap=self.frame_interval)
            evidence[name], verdict = self._judge(name, frozen, frames, preds, rels, reference, iss_streamed, held, t1)
            made[name] = (net, net, cfg, frozen, verdict, losses)
        order = [n for n, _ in candidates]
        if incumbent is not None:
            t1, name = time.perf_counter(), selector.INCUMBENT
            # judged on a copy in this method's dtype and device: the serving one keeps serving, untouched
            judge = copy.deepcopy(incumbent).float().to(next(self.runner.model.parameters()).device).eval()
            frozen = FrozenDiTTA(judge, self.config.judged, self.runtime, trained_gap=self.frame_interval)
            evidence[name], verdict = self._judge(name, frozen, frames, preds, rels, reference, iss_streamed, held, t1)
            made[name] = (incumbent, judge, self.config, frozen, verdict, {})
            order = [name] + order
        chosen, why = selector.choose(evidence, order)
        log.info("selected %s", why)
        self.net, judged_net, cfg, self.frozen, self.verdict, losses = made[chosen or order[0]]
        if cfg.judged is not cfg:  # judged on its plain branch: it serves with the (unadapted) flow branch
            self.frozen = FrozenDiTTA(judged_net, cfg, self.runtime, trained_gap=self.frame_interval)
        if chosen is None:
            self.verdict = GuardVerdict(True, self.verdict.changed, self.verdict.lost_classes,
                                        self.verdict.kept_per_class, [why])
        self._last_warm = frames[-1]
        return {"adapt_seconds": round(time.perf_counter() - t0, 3), "teacher_seconds": round(teacher_s, 3),
                "tta_seconds": round(sum(e.seconds for e in evidence.values()), 3), "losses": losses,
                "targets": stats, "target_report": report, "guard": self.verdict.as_dict(),
                "selection": selector.report(chosen, why, evidence, held), "hyper": self.config.hyper(self.runtime)}

    def _judge(self, name: str, frozen: FrozenDiTTA, frames, preds, rels, reference, iss_streamed, held, t0: float):
        """``(Evidence, GuardVerdict)`` of one candidate of :meth:`select`: ``frozen`` streamed over the
        warm-up frames, the guard's verdict against the ISS ``preds``/``rels`` and the held-out gain
        against ``reference`` beyond ``iss_streamed`` (seconds counted from ``t0``)."""
        from . import selector

        streamed = self._stream_labels(frozen, frames)
        verdict = check(streamed, preds, rels, self.config.guard)
        ev = selector.Evidence(selector.held_out_gain(streamed, reference, iss_streamed, held), verdict.refused,
                               round(verdict.changed, 5), verdict.reasons, round(time.perf_counter() - t0, 3))
        log.info("candidate %s: held-out gain %+.2f pt, guard %s", name, 100 * ev.gain,
                 "refused" if verdict.refused else "accepts")
        return ev, verdict

    @property
    def refused(self) -> bool:
        """True when the guard refused the adaptation (the ISS model serves)."""
        return self.verdict is not None and self.verdict.refused

    def start_stream(self, eval_frames=None) -> None:
        if self.frozen is not None:
            self.frozen.reset()
        if self._last_warm is not None and not self.refused:
            self._step(self._last_warm)
            self.frozen.stats = StreamStats()  # the seed frame is not an evaluation frame

    def stream_stats(self) -> Dict[str, object]:
        """What the evaluation stream did (:meth:`~ditta_ros.runtime.serving.StreamStats.as_dict`):
        frames, the share of frames fused with the temporal branch (add-on or flow), the mean processed-frame gap. A refused
        adaptation serves the ISS: nothing is fused."""
        if self.frozen is None or self.refused:
            return {"fused_share": 0.0}
        return self.frozen.stats.as_dict()

    def _step(self, frame: np.ndarray) -> Prediction:
        if self.frozen is None:
            self.frozen = self.freeze()  # raises before adapt()
        return self.frozen.step(frame, self.frame_interval)

    def predict(self, frame: np.ndarray) -> Prediction:
        if self.refused:
            return self.runner.predict(frame)
        return self._step(frame)


class OracleDiTTA(DiTTAMethod):
    """DiTTA with *oracle* distillation targets: the clip's ground truth on the warm-up
    frames replaces the teacher (same adaptation, guard and streaming), so its score
    is the ceiling of the adaptation machinery on that clip.

    Labels are mapped back to the model's label set through the first source class
    of each target class; ignored pixels keep the ISS prediction; objects are
    per-class 8-connected ground-truth components covering >= 0.5 % of the image.

    Args:
        gt_labels: ``t -> uint8 [H, W]`` ground truth of warm-up frame ``t`` in the
            label map's target set (255 = ignore).
        label_map: the model -> clip label map (``None`` when they are the same set).
        other arguments: as :class:`DiTTAMethod` (``teacher`` is not used).
    """

    name = "ditta-oracle"

    def __init__(self, runner: ISSRunner, gt_labels, label_map=None, **kw):
        super().__init__(runner, None, **kw)
        self.gt_labels = gt_labels
        self.inverse = np.arange(256, dtype=np.int64)
        self.inverse[255] = 255
        if label_map is not None:
            from .labels import UNMAPPED

            self.inverse = np.full(256, 255, np.int64)
            for src in range(label_map.source.num_classes - 1, -1, -1):
                if label_map.lut[src] != UNMAPPED:
                    self.inverse[label_map.lut[src]] = src

    def make_targets(self, frames, preds, rels, target_cfg=None):
        """The ground truth in place of the teacher's targets (``target_cfg`` has nothing to configure
        here: every candidate of a selecting preset gets the same oracle targets)."""
        from .baselines.zs_refine import components

        labels, objs = [], []
        for t in range(len(frames)):
            gt = np.asarray(self.gt_labels(t)).astype(np.int64)
            mapped = self.inverse[gt]
            labels.append(np.where(mapped == 255, preds[t], mapped))
            om = np.zeros(gt.shape, np.int32)
            for k, (m, c, _) in enumerate(components(np.where(gt == 255, -1, gt), np.ones(gt.shape), 0.005), 1):
                if c >= 0:
                    om[m] = k
            objs.append(om)
        report = target_report(labels, preds, self.runner.model.num_classes, int(max(o.max() for o in objs)), {}, 0.0)
        return labels, objs, {"objects": report["objects_kept"]}, report, 0.0
