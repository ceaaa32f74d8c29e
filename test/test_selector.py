"""Label-free choice among candidate adaptations (docs/dev_set_rule.md, addendum 4)."""

import dataclasses

import numpy as np
import pytest
import torch

from ditta_ros import selector
from ditta_ros.selector import Evidence, choose, held_out_gain, holdout


def test_holdout_keeps_every_third_frame_for_judging():
    assert holdout(10) == ([0, 1, 3, 4, 6, 7, 9], [2, 5, 8])
    assert holdout(2) == ([0, 1], [])
    with pytest.raises(ValueError):
        holdout(0)


def test_held_out_gain_counts_agreement_with_the_reference_beyond_the_iss():
    ref = [np.zeros((2, 5), np.int64)] * 3
    iss = [np.array([[0, 0, 0, 1, 1], [0, 0, 0, 0, 0]])] * 3  # agrees on 8 of 10 pixels
    better = [np.zeros((2, 5), np.int64)] * 3  # 10 of 10
    assert held_out_gain(better, ref, iss, [2]) == pytest.approx(0.2)
    assert held_out_gain(iss, ref, iss, [2]) == 0.0 and held_out_gain(better, ref, iss, []) == 0.0


def test_a_refused_candidate_is_never_chosen_and_the_better_one_is():
    order = ["default", "decoder", "faithful"]
    ev = {"default": Evidence(0.0, False), "decoder": Evidence(0.01, False), "faithful": Evidence(0.2, True)}
    assert choose(ev, order)[0] == "decoder"  # the best gain, the guard-refused one excluded
    ev["decoder"] = Evidence(0.0005, False)  # within TIE of the best: the earlier candidate
    assert choose(ev, order)[0] == "default"
    ev = {"default": Evidence(-0.02, False), "faithful": Evidence(0.3, True)}
    chosen, why = choose(ev, order)
    assert chosen is None and "guard refused" in why and "-2.00 pt" in why
    assert choose({"default": Evidence(selector.MIN_GAIN, False)}, order)[0] == "default"


def test_select_never_serves_a_broken_candidate(monkeypatch):
    """A candidate whose targets relabel everything to class 0 and whose decoder is trained hard on them
    is refused by the guard; the other candidate (or the ISS) serves, and the report says why."""
    from ditta_ros import presets
    from ditta_ros.adapt import AdaptConfig
    from ditta_ros.ditta import DiTTAMethod
    from ditta_ros.inference import ISSRunner
    from ditta_ros.iss.espnetv2 import ESPNetv2Seg
    from ditta_ros.teacher.targets import TargetConfig

    broken_targets = TargetConfig(thin_px=99)  # marks the broken candidate's targets
    monkeypatch.setitem(presets.PRESETS, "broken", dataclasses.replace(
        presets.PRESETS["default"], preset="broken", target=broken_targets,
        adapt=AdaptConfig(iters=10, lr=0.05, params="decoder", bn="frozen", anchor=0.0, contrastive=False)))

    class Teacher(DiTTAMethod):
        def make_targets(self, frames, preds, rels, target_cfg=None):
            broken = target_cfg == broken_targets
            labels = [np.zeros_like(p) if broken else p.copy() for p in preds]
            return labels, [np.ones(p.shape, np.int32) for p in preds], {}, {"changed": float(broken)}, 0.0

    torch.manual_seed(0)
    runner = ISSRunner(ESPNetv2Seg(s=0.5, num_classes=5, input_size=(64, 48)).eval())
    frames = [np.random.default_rng(t).integers(0, 255, (40, 56, 3), dtype=np.uint8) for t in range(6)]
    config = dataclasses.replace(presets.DittaConfig.from_preset("default", guard_conf=0.0),
                                 candidates=("default", "broken"))
    method = Teacher(runner, None, config, progress=False)
    info = method.adapt(frames)
    sel = info["selection"]
    assert set(sel["candidates"]) == {"default", "broken"} and sel["held_out"] == [2, 5]
    assert sel["candidates"]["broken"]["refused"] and not sel["candidates"]["broken"]["admissible"]
    assert sel["chosen"] != "broken" and info["hyper"]["candidates"] == ["default", "broken"]
    method.start_stream()
    out = method.predict(frames[0])
    if sel["chosen"] is None:
        assert method.refused and np.array_equal(out.labels, runner.predict(frames[0]).labels)
    else:
        assert not method.refused and (out.labels == 0).mean() < 0.9  # not the all-zero model


def test_the_oracle_takes_every_candidates_target_configuration():
    """OracleDiTTA's ground-truth targets stand in for each candidate's (a selecting preset passes a
    target configuration per candidate)."""
    import inspect

    from ditta_ros.ditta import DiTTAMethod, OracleDiTTA

    assert list(inspect.signature(OracleDiTTA.make_targets).parameters) == \
        list(inspect.signature(DiTTAMethod.make_targets).parameters)


def test_an_addon_only_candidate_trains_nothing_under_the_flow_branch():
    """``fusion="flow"`` serves the moved previous logits, not the add-on: an add-on-only adaptation
    trains nothing (fresh add-on, no losses) and the served model warps the state; a decoder adaptation
    still trains."""
    from ditta_ros.adapt import DiTTANet
    from ditta_ros.presets import DittaConfig

    flow = DittaConfig.from_preset("default", fusion="flow")
    assert flow.trains_nothing_served and flow.warps and DittaConfig.from_preset("default", tau=0).trains_nothing_served
    assert not DittaConfig.from_preset("decoder", fusion="flow").trains_nothing_served
    assert not DittaConfig.from_preset("default").trains_nothing_served and not DittaConfig.from_preset("default").warps

    Teacher, (runner, frames) = _targets_are_the_iss(), _tiny(4)
    fresh = DiTTANet(runner.model).addon.state_dict()
    for cfg, trains in ((flow, False), (DittaConfig.from_preset("decoder", fusion="flow", iters=2), True)):
        method = Teacher(runner, None, cfg, progress=False)
        info = method.adapt(frames)
        assert bool(info["losses"]) == trains
        if not trains:  # the add-on is the fresh one
            assert all(torch.equal(v, fresh[k]) for k, v in method.net.addon.state_dict().items())
        method.start_stream()
        method.predict(frames[1])
        assert method.frozen._warp is not None and info["hyper"]["fusion"] == "flow"


def test_under_the_flow_branch_candidates_are_judged_plain_and_the_chosen_one_serves_with_it(monkeypatch):
    """Addendum 8: the flow branch is not adapted, so each candidate (and the serving model of a
    re-adaptation) is judged on its plain branch (``tau`` 0); the chosen one serves with the flow branch.
    The add-on-only candidate is then the ISS: its held-out gain is 0 exactly."""
    from ditta_ros.adapt import DiTTANet
    from ditta_ros.ditta import DiTTAMethod
    from ditta_ros.presets import DittaConfig

    judged = []
    real = DiTTAMethod._judge

    def spy(self, name, frozen, *a, **kw):
        judged.append((name, frozen.tau, frozen._warp))
        return real(self, name, frozen, *a, **kw)

    monkeypatch.setattr(DiTTAMethod, "_judge", spy)
    Teacher, (runner, frames) = _targets_are_the_iss(), _tiny(6)
    config = dataclasses.replace(DittaConfig.from_preset("default", fusion="flow", guard_conf=0.0),
                                 candidates=("default",))
    assert config.judged.tau == 0.0 and config.tau > 0 and DittaConfig.from_preset("default").judged.tau > 0
    method = Teacher(runner, None, config, progress=False)
    info = method.adapt(frames, incumbent=DiTTANet(runner.model).eval())
    sel = info["selection"]
    assert [n for n, _, _ in judged] == ["default", selector.INCUMBENT]
    assert all(tau == 0.0 and warp is None for _, tau, warp in judged)
    assert sel["candidates"]["default"]["gain"] == 0.0 and sel["chosen"] is not None
    method.start_stream()
    method.predict(frames[1])
    assert method.frozen.tau == config.tau and method.frozen._warp is not None  # served with the flow branch


def test_a_readaptation_keeps_the_serving_model_unless_a_candidate_beats_it():
    """The serving model (``incumbent``) is judged on the new warm-up beside the candidates, first in the
    order: equal evidence keeps it; a broken one (every weight negated: the guard refuses it) gives way."""
    from ditta_ros.adapt import DiTTANet
    from ditta_ros.presets import DittaConfig

    Teacher, (runner, frames) = _targets_are_the_iss(), _tiny(6)
    # tau 0: the add-on-only candidate trains nothing and equals a fresh network, as the incumbent below
    config = dataclasses.replace(DittaConfig.from_preset("default", tau=0.0, guard_conf=0.0), candidates=("default",))
    same = DiTTANet(runner.model).eval()
    info = Teacher(runner, None, config, progress=False).adapt(frames, incumbent=same)
    sel = info["selection"]
    assert list(sel["candidates"]) == ["default", selector.INCUMBENT] and sel["chosen"] == selector.INCUMBENT
    assert sel["candidates"][selector.INCUMBENT]["gain"] == sel["candidates"]["default"]["gain"]

    import copy

    broken_iss = copy.deepcopy(runner.model)
    with torch.no_grad():
        for p in broken_iss.parameters():  # every weight negated
            p.mul_(-1.0)
    method = Teacher(runner, None, config, progress=False)
    sel = method.adapt(frames, incumbent=DiTTANet(broken_iss).eval())["selection"]
    assert sel["candidates"][selector.INCUMBENT]["refused"] and sel["chosen"] == "default"
    # the default candidate serves: the pre-trained weights (a copy), not the negated ones
    assert all(torch.equal(a, b) for a, b in zip(method.net.iss.parameters(), runner.model.parameters()))


def _targets_are_the_iss():
    """A DiTTAMethod whose distillation targets are the ISS's own labels (no teacher)."""
    from ditta_ros.ditta import DiTTAMethod

    class SameAsISS(DiTTAMethod):
        def make_targets(self, frames, preds, rels, target_cfg=None):
            return [p.copy() for p in preds], [np.ones(p.shape, np.int32) for p in preds], {}, {"changed": 0.0}, 0.0

    return SameAsISS


def _tiny(n):
    """``(runner, frames)``: a small random ESPNetv2 and ``n`` random 40x56 frames."""
    from ditta_ros.inference import ISSRunner
    from ditta_ros.iss.espnetv2 import ESPNetv2Seg

    torch.manual_seed(0)
    runner = ISSRunner(ESPNetv2Seg(s=0.5, num_classes=5, input_size=(64, 48)).eval())
    return runner, [np.random.default_rng(t).integers(0, 255, (40, 56, 3), dtype=np.uint8) for t in range(n)]
