"""The live pipeline behind the node (ROS-free): phases, failure handling, reset/readapt, size changes."""

import numpy as np
import pytest
import torch

from ditta_ros.adapt import DiTTANet
from ditta_ros.inference import ISSRunner
from ditta_ros.iss.espnetv2 import ESPNetv2Seg
from ditta_ros.live import LiveConfig, LivePipeline, Phase


class _FakeMethod:
    """Adaptation stand-in: returns the pre-trained network (or fails)."""

    def __init__(self, runner, fail=False, refuse=False):
        self.runner, self.fail, self.net, self.refused = runner, fail, None, False
        self.refuse = refuse

    def adapt(self, frames):
        if self.fail:
            raise RuntimeError("teacher weights missing")
        self.net = DiTTANet(self.runner.model).eval()
        self.refused = self.refuse
        guard = {"refused": self.refuse, "changed": 0.4, "lost_classes": [3],
                 "reasons": ["40.0% of the confident ISS pixels changed label (limit 10%)"] if self.refuse else []}
        return {"adapt_seconds": 0.0, "teacher_seconds": 0.0, "tta_seconds": 0.0, "guard": guard,
                "target_report": {"changed": 0.01, "objects_kept": 4, "objects_dropped": {"impure": 2}}}


def _runner():
    torch.manual_seed(0)
    return ISSRunner(ESPNetv2Seg(s=0.5, num_classes=5, input_size=(64, 48)).eval())


def _frame(h=40, w=56, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_phases_from_warmup_to_streaming_and_back():
    cfg = LiveConfig(warmup_frames=3, frame_stride=2, backend="torch")
    live = LivePipeline(cfg, _runner(), method_factory=lambda r: _FakeMethod(r))
    phases = []
    for i in range(6):  # stride 2: frames 0, 2, 4 are kept -> adaptation starts on the 5th frame
        pred, phase = live.process(_frame(seed=i), stamp=i * 0.1)
        phases.append(phase)
        assert pred.labels.shape == (40, 56) and pred.labels.dtype == np.uint8
    assert phases[:5] == [Phase.WARMUP] * 5
    live.wait_idle(60)
    assert live.phase == Phase.STREAMING and live.last_adapt["warmup_frames"] == 3
    assert "torch" in live.last_adapt["backend"]
    p1, ph = live.process(_frame(seed=7))
    assert ph == Phase.STREAMING
    p2, _ = live.process(_frame(30, 44, seed=8))  # size change: state restarted, backend re-prepared
    assert p2.labels.shape == (30, 44)
    assert live.readapt() == "warm-up started" and live.phase == Phase.WARMUP
    live.reset()
    assert live.phase == Phase.ISS and live.process(_frame())[1] == Phase.ISS
    with pytest.raises(ValueError, match="uint8"):
        live.process(np.zeros((4, 4), np.float32))


def _adapted(**fake):
    """A pipeline after a 2-frame warm-up and the adaptation of a ``_FakeMethod(**fake)``."""
    live = LivePipeline(LiveConfig(warmup_frames=2, backend="torch"), _runner(),
                        method_factory=lambda r: _FakeMethod(r, **fake))
    for i in range(2):
        live.process(_frame(seed=i))
    live.wait_idle(60)
    return live


def test_failed_adaptation_falls_back_to_the_iss_model():
    live = _adapted(fail=True)
    assert live.phase == Phase.ISS and "teacher weights missing" in live.error
    assert live.process(_frame())[0].labels.shape == (40, 56)


def test_refused_adaptation_serves_the_iss_model_with_a_warning():
    live = _adapted(refuse=True)
    st = live.status()
    assert live.phase == Phase.ISS and "do-no-harm guard" in st["warning"] and "40.0%" in st["warning"]
    assert st["last_adaptation"]["guard"]["refused"] and st["last_adaptation"]["targets_changed"] == 0.01
    pred, phase = live.process(_frame(seed=5))
    assert phase == Phase.ISS and np.array_equal(pred.labels, live.runner.predict(_frame(seed=5)).labels)
    ok = _adapted()
    assert ok.phase == Phase.STREAMING and ok.status()["warning"] is None
    assert ok.status()["last_adaptation"]["objects_dropped"] == {"impure": 2}


def test_live_config_resolves_presets_and_overrides():
    d = LiveConfig().method_configs()
    assert d["adapt_cfg"].params == "addon" and d["guard_cfg"].enabled and d["max_gap"] == 0.2
    f = LiveConfig(preset="faithful", iters=2, guard=True).method_configs()
    assert f["adapt_cfg"].params == "decoder" and f["adapt_cfg"].iters == 2 and f["max_gap"] == 0.0
    assert f["target_cfg"].candidate == "backend"
    assert not LiveConfig(guard=False).method_configs()["guard_cfg"].enabled
    with pytest.raises(ValueError, match="preset"):
        LiveConfig(preset="best").method_configs()


def test_warmup_seconds_close_the_window_early():
    live = LivePipeline(LiveConfig(warmup_frames=100, warmup_seconds=0.5, backend="torch"), _runner(),
                        method_factory=lambda r: _FakeMethod(r))
    for i in range(4):
        live.process(_frame(seed=i), stamp=i * 0.2)  # 0.6 s of stream time after 4 frames
    live.wait_idle(60)
    assert live.phase == Phase.STREAMING and live.last_adapt["warmup_frames"] == 4


def test_scene_change_detector_needs_a_sustained_shift():
    from ditta_ros.live import SceneChangeDetector

    det = SceneChangeDetector(4, threshold=0.3, frames=5)
    road = np.zeros((10, 10), np.uint8)
    sky = np.full((10, 10), 3, np.uint8)
    assert not any(det.update(road) for _ in range(5))  # reference
    assert not any(det.update(sky) for _ in range(2))  # a short glimpse is not a change
    assert not any(det.update(road) for _ in range(10))
    fired = [det.update(sky) for _ in range(20)]
    assert any(fired) and fired.count(True) == 1 and det.distance <= 1.0


def test_auto_readapt_starts_a_new_warmup_after_a_scene_change():
    cfg = LiveConfig(warmup_frames=2, backend="torch", auto_readapt=True, scene_change_frames=2,
                     scene_change_threshold=0.01)
    live = LivePipeline(cfg, _runner(), method_factory=lambda r: _FakeMethod(r))
    for i in range(2):
        live.process(_frame(seed=i))
    live.wait_idle(60)
    assert live.phase == Phase.STREAMING
    from ditta_ros.inference import Prediction

    scene = {"cls": 0}  # the streamed labels are all one class; the scene then switches to another
    live._stream = lambda frame, stamp=None: Prediction(np.full(frame.shape[:2], scene["cls"], np.uint8),
                                            np.ones(frame.shape[:2], np.float32))
    for _ in range(4):
        live.process(_frame())
    assert live.phase == Phase.STREAMING
    scene["cls"] = 3
    for _ in range(6):
        live.process(_frame())
        if live.phase == Phase.WARMUP:
            break
    assert live.phase == Phase.WARMUP


def test_iss_phase_and_adapted_model_serve_on_openvino_with_a_cached_export(tmp_path, caplog):
    """backend openvino: the warm-up labels come from the plain-ISS graph on OpenVINO (equal to
    the torch ISS on >= 99 % of pixels), exported once per model and frame size; a restarted
    pipeline reuses that export; the adapted model streams on OpenVINO too."""
    import logging

    cfg = LiveConfig(warmup_frames=2, backend="openvino", export_dir=str(tmp_path / "export"),
                     engine_cache=str(tmp_path / "engines"), openvino_precision="f32")
    runner = _runner()
    live = LivePipeline(cfg, runner, method_factory=lambda r: _FakeMethod(r))
    with caplog.at_level(logging.INFO, logger="ditta"):
        pred, phase = live.process(_frame(seed=1), stamp=0.0)
    assert phase == Phase.WARMUP and "ISS model on openvino" in caplog.text
    assert (pred.labels == runner.predict(_frame(seed=1)).labels).mean() >= 0.99
    exports = sorted(p.name for p in (tmp_path / "export").rglob("*.onnx"))
    assert len(exports) == 1 and "_tau0_" in exports[0]
    live.process(_frame(seed=2), stamp=0.1)
    live.wait_idle(120)
    assert live.phase == Phase.STREAMING and "openvino" in live.last_adapt["backend"]
    assert live.process(_frame(seed=3), stamp=0.2)[1] == Phase.STREAMING
    # a restart: the plain-ISS export is found and reused, nothing new is written for it
    caplog.clear()
    again = LivePipeline(cfg, runner, method_factory=lambda r: _FakeMethod(r))
    with caplog.at_level(logging.INFO, logger="ditta"):
        again.process(_frame(seed=1), stamp=0.0)
    assert "reusing the export" in caplog.text
    assert len([p for p in (tmp_path / "export").rglob("*.onnx") if "_tau0_" in p.name]) == 1
