"""Distillation targets: prompt selection, vote (Eq. 4), render, Eq. 5 labels, merge."""

import math
from dataclasses import replace

import numpy as np

from ditta_ros.teacher.propagator import Propagator
from ditta_ros.teacher.targets import (FAITHFUL_TARGETS, TargetConfig, Targets, build_targets, render,
                                       select_prompts, vote)


def test_prompt_selection_order_threshold_occupancy_and_budget():
    pred = np.array([[0, 0, 1, 1], [2, 2, 1, 1]])
    rel = np.array([[0.5, 0.9, 0.95, 0.7], [0.85, 0.3, 0.95, 0.1]])
    counts = np.zeros(3, np.int64)
    picks = select_prompts(pred, rel, 0.8, None, 10, counts)
    # class 1 (peak .95, first at (x=2, y=0)), class 0 (.9 at x=1), class 2 (.85 at x=0, y=1)
    assert picks == [(1, 2, 0), (0, 1, 0), (2, 0, 1)]
    assert counts.tolist() == [2, 4, 2]
    occupied = np.zeros_like(pred, bool)
    occupied[0, 2] = True
    assert select_prompts(pred, rel, 0.8, occupied, 10, counts) == [(0, 1, 0), (2, 0, 1)]
    assert select_prompts(pred, rel, 0.88, None, 10, counts) == [(1, 2, 0), (0, 1, 0)]
    assert select_prompts(pred, rel, 0.8, None, 1, counts) == [(1, 2, 0)]
    assert counts.tolist() == [8, 16, 8]  # every class counted every call


def test_vote_and_render_by_hand():
    preds = [np.array([[0, 0, 1, 1]]), np.array([[0, 1, 1, 1]])]
    rels = [np.array([[1.0, 0.5, 0.8, 0.4]]), np.array([[0.2, 0.6, 0.6, 0.6]])]
    m1 = [np.array([[True, True, True, False]]), np.array([[True, True, False, False]])]
    merged = [{1: m1[0], 2: np.array([[False, False, True, True]])}, {1: m1[1]}]
    ppc = np.array([3, 5])
    s = vote(merged, preds, rels, ppc, b=0.3, c_exp=0.8)
    # object 1: class 0 pixels (1.0, 0.5, 0.2) = 3, class 1 pixels (0.8, 0.6) = 2, object area 5
    assert math.isclose(s[1][0], (1.7 / 3) * (3 / 5) ** 0.3 * (1 - 3 / 8) ** 0.8)
    assert math.isclose(s[1][1], (1.4 / 2) * (2 / 5) ** 0.3 * (1 - 5 / 8) ** 0.8)
    assert math.isclose(s[2][1], 0.6 * 1.0 * (1 - 5 / 8) ** 0.8)
    maps = render(merged, s, (1, 4))
    # object 1's best score beats object 2's, so object 1 is painted last and wins pixel 2
    assert max(s[1].values()) > max(s[2].values())
    assert maps[0].tolist() == [[1, 1, 1, 2]] and maps[1].tolist() == [[1, 1, 0, 0]]
    t = Targets(maps, {1: 0, 2: 1})
    assert t.label(0, preds[0]).tolist() == [[0, 0, 0, 1]]
    assert t.label(1, np.array([[5, 5, 4, 3]])).tolist() == [[0, 0, 4, 3]]


class ShiftProp(Propagator):
    """A fake propagator: every mask moves one pixel right per forward step."""

    def init(self, frames):
        self.n, self.shape = len(frames), frames[0].shape[:2]
        self.reset()

    def reset(self):
        self.tracks = {}

    def add_points(self, t, obj_id, points, labels):
        x, y = int(points[0][0]), int(points[0][1])
        m = np.zeros(self.shape, bool)
        m[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2] = True
        self.tracks.setdefault(t, {})[obj_id] = m
        return m

    def add_mask(self, t, obj_id, mask):
        self.tracks.setdefault(t, {})[obj_id] = mask

    def masks(self, t):
        return dict(self.tracks.get(t, {}))

    def step(self, t, reverse=False):
        nxt = t - 1 if reverse else t + 1
        out = {o: np.roll(m, -1 if reverse else 1, axis=1) for o, m in self.tracks.get(t, {}).items()}
        self.tracks[nxt] = {**self.tracks.get(nxt, {}), **out}
        return out


def test_build_targets_bidirectional_merge():
    frames = [np.zeros((10, 12, 3), np.uint8)] * 3
    preds, rels = [], []
    for t in range(3):
        p = np.zeros((10, 12), np.int64)
        r = np.full((10, 12), 0.5)
        r[5, 2 + t] = 0.9  # class 0 peak moves with the shift
        if t == 2:
            p[0:3, 9:12] = 1  # class 1 appears on frame 2 only
            r[1, 10] = 0.95
        preds.append(p)
        rels.append(r)
    tg = build_targets(ShiftProp(), frames, preds, rels, num_classes=2, cfg=FAITHFUL_TARGETS)
    assert tg.prompts[0] == [(1, 2, 5)]  # frame 0: class 0 at its peak
    assert [p[0] for p in tg.prompts[2]] == [2]  # class-0 peak is occupied by the track; class 1 is new
    # object 2 was prompted on frame 2 and propagated backwards to frames 1 and 0
    assert (tg.obj_maps[0] == 2).sum() > 0 and (tg.obj_maps[1] == 2).sum() > 0
    assert tg.obj_class == {1: 0, 2: 1}
    assert tg.stats["objects"] == 2 and 0 < tg.stats["covered_fraction"] < 1


def test_targets_cache_roundtrip(tmp_path):
    t = Targets([np.array([[0, 1], [2, 2]], np.int32)], {1: 3, 2: 4}, {1: {3: 0.5}, 2: {4: 0.7}}, {0: [(1, 0, 1)]},
                {"objects": 2})
    t.save(str(tmp_path / "t.npz"))
    u = Targets.load(str(tmp_path / "t.npz"))
    assert np.array_equal(u.obj_maps[0], t.obj_maps[0]) and u.obj_class == t.obj_class
    assert u.scores == t.scores and u.prompts == {0: [(1, 0, 1)]} and u.stats == {"objects": 2}


# -- options that keep the targets from being worse than the ISS -----------------------

def _cands(masks, iou, default=1):
    from ditta_ros.teacher.propagator import Candidates

    masks = np.stack(masks)
    return Candidates(masks=masks, iou=np.asarray(iou, np.float32), low=np.zeros((len(masks), 4, 4), np.float32),
                      default=default)


def test_candidate_rule_iou_purity_on_clicks_and_propagation():
    from ditta_ros.teacher.targets import make_chooser

    pred = np.zeros((4, 8), np.int64)
    pred[:, 4:] = 1  # class 0 left half, class 1 right half
    merged = np.ones((4, 8), bool)  # road + pavement in one mask
    pure = pred == 0
    tiny = np.zeros((4, 8), bool)
    tiny[0, 0] = True
    cand = _cands([merged, merged, pure, tiny], [0.99, 0.95, 0.90, 0.2], default=1)
    assert make_chooser("backend", [pred], {}) is None  # the backend's own choice
    choose = make_chooser("iou_purity", [pred], {7: 0})
    assert choose(0, 7, cand, None) == 2  # .90 x 1.0 beats .95 x .5; token 0 is not a click candidate
    # propagation keeps the granularity: the candidate overlapping the previous mask most
    prev = merged.copy()
    assert choose(0, 7, cand, prev) in (0, 1) and choose(0, 7, cand, pure) == 2
    # nothing scores: fall back to the backend's choice
    assert choose(0, 8, _cands([tiny, tiny, tiny, tiny], [0, 0, 0, 0], default=3), None) == 3


def test_purity_gate_and_drift_cut_remove_only_impure_objects():
    from ditta_ros.teacher.targets import object_purity

    preds = [np.array([[0, 0, 0, 1, 1]]), np.array([[0, 0, 1, 1, 1]])]
    a = [np.array([[1, 1, 1, 1, 0]], bool), np.array([[1, 1, 1, 1, 0]], bool)]  # class 0: 3/4 then 2/4
    b = [np.array([[0, 0, 0, 1, 1]], bool), np.array([[0, 0, 0, 1, 1]], bool)]  # class 1: pure
    overall, per_frame = object_purity([{1: a[0], 2: b[0]}, {1: a[1], 2: b[1]}], preds, {1: 0, 2: 1})
    assert overall == {1: 5 / 8, 2: 1.0}
    assert per_frame == [{1: 0.75, 2: 1.0}, {1: 0.5, 2: 1.0}]

    class Fixed(ShiftProp):
        """A click left of x=3 tracks the impure mask ``a``, else the pure ``b``, on every frame."""

        which = {}

        def add_points(self, t, obj_id, points, labels):
            self.which[obj_id] = a if int(points[0][0]) < 3 else b
            self.tracks.setdefault(t, {})[obj_id] = self.which[obj_id][t]
            return self.which[obj_id][t]

        def step(self, t, reverse=False):
            nxt = t - 1 if reverse else t + 1
            self.tracks[nxt] = {o: self.which[o][nxt] for o in self.tracks.get(t, {})}
            return self.tracks[nxt]

    frames = [np.zeros((1, 5, 3), np.uint8)] * 2
    rels = [np.array([[0.9, 0.5, 0.5, 0.5, 0.95]]), np.array([[0.5, 0.5, 0.5, 0.5, 0.5]])]
    base = build_targets(Fixed(), frames, preds, rels, 2, FAITHFUL_TARGETS)
    assert set(base.obj_class) == {1, 2}
    gated = build_targets(Fixed(), frames, preds, rels, 2, replace(FAITHFUL_TARGETS, purity_gate=0.7))
    # class 1 peaks first (0.95): object 1 = the pure mask b; object 2 = the impure mask a
    assert base.obj_class == {1: 1, 2: 0}
    assert gated.obj_class == {1: 1} and gated.report["objects_dropped"]["impure"] == 1
    assert not (gated.obj_maps[0] == 2).any() and (gated.obj_maps[0] == 1).sum() == 2
    # the ISS keeps the pixels the dropped object would have relabelled
    assert gated.labels[1].tolist() == [[0, 0, 1, 1, 1]]
    assert base.labels[1].tolist() != gated.labels[1].tolist()
    drift = build_targets(Fixed(), frames, preds, rels, 2, replace(FAITHFUL_TARGETS, drift_cut=0.6))
    assert 2 in drift.obj_class and (drift.obj_maps[0] == 2).any() and not (drift.obj_maps[1] == 2).any()
    assert drift.report["objects_dropped"]["drifted_frames"] == 1


def test_reliability_gate_and_thin_protection_keep_the_iss_where_they_should():
    from ditta_ros.teacher.targets import gated_labels, thin_regions

    pred = np.zeros((12, 12), np.int64)
    pred[:, 5:7] = 2  # a 2-px pole
    pred[8:, :] = 1  # a wide region of class 1
    rel = np.full((12, 12), 0.5)
    rel[0:2, :] = 0.95  # the ISS is sure of the top rows
    objmap = np.ones((12, 12), np.int32)  # one object of class 3 over everything
    thin = thin_regions(pred, 4)
    assert thin[:8, 5:7].all() and not thin[:, :4].any() and not thin[8:, :].any()
    plain = gated_labels([objmap], {1: 3}, [pred], [rel], FAITHFUL_TARGETS)[0]
    assert (plain == 3).all()
    g = gated_labels([objmap], {1: 3}, [pred], [rel], replace(FAITHFUL_TARGETS, rel_gate=0.8))[0]
    assert (g[0:2] == pred[0:2]).all() and (g[2:] == 3).all()
    t = gated_labels([objmap], {1: 3}, [pred], [rel], replace(FAITHFUL_TARGETS, thin_px=4))[0]
    assert (t[thin] == 2).all() and (t[~thin] == 3).all()


def test_target_report_counts_changed_pixels_per_class():
    from ditta_ros.teacher.targets import target_report

    pred = np.array([[0, 0, 1, 1]])
    label = np.array([[0, 2, 1, 1]])
    r = target_report([label], [pred], 3, kept=2, dropped={"impure": 1}, teacher_seconds=1.23456)
    assert r["changed"] == 0.25 and r["changed_per_class"] == {0: 0.5, 1: 0.0}
    assert r["objects_kept"] == 2 and r["objects_dropped"] == {"impure": 1} and r["teacher_seconds"] == 1.235


def test_target_config_rejects_bad_values():
    import pytest

    with pytest.raises(ValueError, match="candidate"):
        TargetConfig(candidate="best")
    with pytest.raises(ValueError, match="rel_gate"):
        TargetConfig(rel_gate=1.5)


def test_default_targets_are_the_gated_ones_and_faithful_is_official():
    d = TargetConfig()
    assert (d.candidate, d.purity_gate, d.rel_gate, d.thin_px) == ("iou_purity", 0.8, 0.8, 4)
    f = FAITHFUL_TARGETS
    assert (f.candidate, f.purity_gate, f.rel_gate, f.thin_px, f.drift_cut) == ("backend", 0.0, 0.0, 0, 0.0)
    assert (f.max_track, f.thr_first, f.thr_later, f.b, f.c, f.dilate) == (100, 0.8, 0.8, 0.3, 0.8, 5)


# -- temporal vote of the warm-up's ISS labels (addendum 10) -----------------------------

def _textured(h=120, w=160, seed=0):
    import cv2

    img = (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)
    return cv2.GaussianBlur(img, (5, 5), 0)


def test_temporal_vote_repairs_an_unreliable_patch_where_the_flow_moves_it():
    from ditta_ros.teacher.temporal import temporal_vote

    base = _textured()
    frames = [np.roll(base, 2 * t, axis=1) for t in range(5)]  # the scene moves 2 px right per frame
    preds = []
    for t in range(5):
        p = np.zeros(base.shape[:2], np.int64)
        p[:, 60 + 2 * t:100 + 2 * t] = 3  # a band that moves with the scene
        preds.append(p)
    rels = [np.full(base.shape[:2], 0.9, np.float32) for _ in range(5)]
    preds[2][50:70, 20:40] = 7  # frame 2 alone, unsure, calls a patch class 7
    rels[2][50:70, 20:40] = 0.3
    voted_p, voted_r = temporal_vote(frames, preds, rels, interval=1 / 15, limit=0.2)
    assert (voted_p[2][50:70, 20:40] == 0).all()  # four sure neighbours (reach 2 each side) outvote it
    assert np.isclose(voted_r[2][60, 30], 4 * 0.9 / 5)  # the winner's score over five voters
    assert (voted_p[2][:, 64:104] == 3).all() and (voted_p[2][:, 40:60] == 0).all()  # the band stays
    assert np.isclose(voted_r[2][10, 30], 0.9)  # unanimous voters keep the reliability
    assert voted_p[2].dtype == np.int64 and voted_r[2].dtype == np.float32


def test_temporal_vote_reach_follows_the_limit_and_ties_keep_the_own_label():
    from ditta_ros.teacher.temporal import temporal_vote

    frame = _textured(seed=1)
    frames = [frame] * 4  # a still scene: zero flow, consistent everywhere
    preds = [np.zeros((120, 160), np.int64)] + [np.full((120, 160), 5, np.int64)] * 3
    rels = [np.full((120, 160), 1.0, np.float32)] + [np.full((120, 160), 0.9, np.float32)] * 3
    one, _ = temporal_vote(frames, preds, rels, interval=0.15, limit=0.2)  # reach 1: 0.9 < 1.0
    two, _ = temporal_vote(frames, preds, rels, interval=0.1, limit=0.2)  # reach 2: 1.8 > 1.0
    assert (one[0] == 0).all() and (two[0] == 5).all()
    everyone, _ = temporal_vote(frames, preds, rels, interval=1.0, limit=0.0)  # limit 0: no limit
    assert (everyone[0] == 5).all()
    for interval in (None, 0.0, 0.25):  # unknown interval, or every neighbour beyond the limit
        same_p, same_r = temporal_vote(frames, preds, rels, interval=interval, limit=0.2)
        assert all(np.array_equal(a, b) for a, b in zip(same_p, preds))
        assert all(np.array_equal(a, b) for a, b in zip(same_r, rels))
    tie_rels = [np.full((120, 160), 0.9, np.float32)] * 4
    tied, _ = temporal_vote(frames[:2], preds[:2], tie_rels[:2], interval=0.1, limit=0.2)
    assert (tied[0] == 0).all() and (tied[1] == 5).all()


def test_temporal_vote_rejects_mismatched_inputs():
    import pytest

    from ditta_ros.teacher.temporal import temporal_vote

    f = _textured()
    with pytest.raises(ValueError, match="one to one"):
        temporal_vote([f, f], [np.zeros((120, 160))], [np.ones((120, 160))] * 2, 0.1, 0.2)
    with pytest.raises(ValueError, match="frame size"):
        temporal_vote([f], [np.zeros((60, 80))], [np.ones((60, 80))], 0.1, 0.2)


def test_make_targets_feeds_the_voted_labels_to_the_teacher_and_reports_against_the_iss(monkeypatch, tmp_path):
    """With ``temporal_vote`` the builder gets the voted labels, the report's ``changed`` is measured against the
    frame-wise ISS with the share the vote changed beside it, and the targets are cached under another key; without
    it the cache key is the one targets had before the option existed."""
    import torch

    from ditta_ros import ditta as ditta_mod
    from ditta_ros.ditta import DiTTAMethod
    from ditta_ros.inference import ISSRunner
    from ditta_ros.iss.espnetv2 import ESPNetv2Seg
    from ditta_ros.presets import DittaConfig
    from ditta_ros.teacher.targets import cache_key, target_report

    seen = []

    def fake_build(prop, frames, preds, rels, num_classes, cfg, progress=None):
        seen.append([p.copy() for p in preds])
        labels = [p.astype(np.int64) for p in preds]
        return Targets([np.zeros(p.shape, np.int32) for p in preds], {}, stats={"teacher_seconds": 0.0},
                       labels=labels, report=target_report(labels, preds, num_classes, 0, {}, 0.0))

    monkeypatch.setattr(ditta_mod, "build_targets", fake_build)
    torch.manual_seed(0)
    runner = ISSRunner(ESPNetv2Seg(s=0.5, num_classes=8, input_size=(64, 48)).eval())
    frame = _textured(seed=2)
    frames = [frame] * 3
    preds = [np.zeros((120, 160), np.int64), np.full((120, 160), 5, np.int64), np.full((120, 160), 5, np.int64)]
    rels = [np.full((120, 160), 0.5, np.float32)] + [np.full((120, 160), 0.9, np.float32)] * 2
    for vote_on in (False, True):
        config = DittaConfig.from_preset("select", temporal_vote=vote_on)
        assert all(c.target.temporal_vote == vote_on for _, c in config.candidate_configs())
        method = DiTTAMethod(runner, lambda: None, config, progress=False, cache_dir=str(tmp_path))
        method.frame_interval = 1 / 15
        labels, _, _, report, _ = method.make_targets(frames, preds, rels)
        if vote_on:
            assert (seen[-1][0] == 5).all() and (labels[0] == 5).all()  # the voted labels reached the teacher
            assert np.isclose(report["changed"], 1 / 3) and np.isclose(report["voted"], 1 / 3)
        else:
            assert (seen[-1][0] == 0).all() and report["changed"] == 0.0 and "voted" not in report
    from dataclasses import asdict
    plain = {k: v for k, v in asdict(TargetConfig()).items() if k != "temporal_vote"}
    assert (tmp_path / f"targets_{cache_key(method.cache_tag, 3, plain, '')}.npz").is_file()
    assert len(list(tmp_path.glob("targets_*.npz"))) == 2
