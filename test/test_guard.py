"""The do-no-harm guard: label-free refusal of an adaptation that changes what the ISS is sure of."""

import dataclasses

import numpy as np
import pytest
import torch

from ditta_ros.adapt import AdaptConfig
from ditta_ros.ditta import DiTTAMethod
from ditta_ros.guard import GuardConfig, check
from ditta_ros.presets import DittaConfig
from ditta_ros.inference import ISSRunner
from ditta_ros.iss.espnetv2 import ESPNetv2Seg


def _maps(n=3, h=20, w=30):
    rng = np.random.default_rng(0)
    iss = [np.repeat(np.arange(3), 10)[None].repeat(h, 0) for _ in range(n)]  # 3 vertical bands
    rels = [np.where(rng.random((h, w)) < 0.7, 0.95, 0.3) for _ in range(n)]
    return iss, rels


def test_identical_labels_pass_and_unconfident_changes_are_ignored():
    iss, rels = _maps()
    v = check([p.copy() for p in iss], iss, rels)
    assert not v.refused and v.changed == 0 and v.lost_classes == [] and set(v.kept_per_class) == {0, 1, 2}
    moved = [np.where(r < 0.8, 2, p) for p, r in zip(iss, rels)]  # only unconfident pixels change
    assert not check(moved, iss, rels).refused


def test_too_many_changed_pixels_or_a_lost_class_refuse():
    iss, rels = _maps()
    shifted = [(p + 1) % 3 * (np.arange(p.shape[1]) < 6) + p * (np.arange(p.shape[1]) >= 6) for p in iss]
    v = check(shifted, iss, rels)  # 6 of 30 columns relabelled: ~20 % of the confident pixels
    assert v.refused and 0.15 < v.changed < 0.25 and "changed label" in v.reasons[0]
    lost = [np.where(p == 2, 0, p) for p in iss]  # class 2 (a third of the image) disappears
    v = check(lost, iss, rels, GuardConfig(max_changed=0.5))
    assert v.refused and v.lost_classes == [2] and "lost classes 2" in v.reasons[0]
    off = check(lost, iss, rels, GuardConfig(enabled=False, max_changed=0.5))
    assert not off.refused and off.reasons  # figures still reported when disabled
    with pytest.raises(ValueError):
        check(lost[:2], iss, rels)
    with pytest.raises(ValueError):
        GuardConfig(max_changed=2.0)


class _BrokenTargets(DiTTAMethod):
    """Targets that relabel every pixel to class 0: a deliberately broken adaptation."""

    def make_targets(self, frames, preds, rels):
        labels = [np.zeros_like(p) for p in preds]
        objs = [np.ones(p.shape, np.int32) for p in preds]
        return labels, objs, {}, {"changed": 1.0}, 0.0


def _frames(n=3, h=40, w=56):
    rng = np.random.default_rng(1)
    return [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_guard_refuses_a_broken_adaptation_and_the_iss_serves():
    torch.manual_seed(0)
    runner = ISSRunner(ESPNetv2Seg(s=0.5, num_classes=5, input_size=(64, 48)).eval())
    frames = _frames()
    cfg = GuardConfig(conf=0.0)  # a random ISS is never confident: judge every pixel
    broken = AdaptConfig(iters=10, lr=0.05, params="decoder", bn="frozen", anchor=0.0, contrastive=False)
    config = DittaConfig.from_preset("default", tau=0.8)
    config = dataclasses.replace(config, adapt=broken, guard=cfg)
    method = _BrokenTargets(runner, None, config, progress=False)
    info = method.adapt(frames)
    assert info["guard"]["refused"] and method.refused
    assert info["guard"]["changed"] > 0.1
    method.start_stream()
    out = method.predict(frames[0])
    ref = runner.predict(frames[0])
    assert np.array_equal(out.labels, ref.labels)  # the ISS serves, not the broken model
    # the same adaptation without the guard is served, and differs from the ISS
    unguarded = _BrokenTargets(runner, None, dataclasses.replace(config, guard=GuardConfig(enabled=False, conf=0.0)),
                               progress=False)
    info = unguarded.adapt(frames)
    assert not unguarded.refused and info["guard"]["reasons"]
    unguarded.start_stream()
    assert (unguarded.predict(frames[0]).labels == 0).mean() > (ref.labels == 0).mean()
