"""The live pipeline behind the node (ROS-free): phases, failure handling, reset/readapt, size changes."""

import numpy as np
import pytest
import torch

from ditta_ros.adapt import DiTTANet
from ditta_ros.inference import ISSRunner
from ditta_ros.iss.espnetv2 import ESPNetv2Seg
from ditta_ros.live import LiveConfig, LivePipeline, Phase


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    """Adaptations are saved to checkpoint_dir (default under ~): keep them in the test's folder."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


class _FakeMethod:
    """Adaptation stand-in: returns the pre-trained network (or fails)."""

    def __init__(self, runner, fail=False, refuse=False):
        self.runner, self.fail, self.net, self.refused = runner, fail, None, False
        self.refuse = refuse

    frame_interval = None

    def adapt(self, frames, iss_preds=None, incumbent=None):
        self.iss_preds, self.interval = iss_preds, self.frame_interval
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
    st = live.status()  # frames 0.1 s apart; the adapted model has streamed nothing yet
    assert st["frame_gap_ms"] == pytest.approx(100.0) and st["fused_share"] is None and st["streamed_frames"] == 0
    p1, ph = live.process(_frame(seed=7), stamp=0.6)
    assert ph == Phase.STREAMING and live.status()["fused_share"] == 0.0  # a stream's first frame is not fused
    live.process(_frame(seed=8), stamp=0.7)
    assert live.status()["fused_share"] == 0.5 and live.status()["streamed_frames"] == 2
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
        live.process(_frame(seed=i), stamp=0.1 * i)
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
    # a refused re-adaptation keeps the previous adaptation serving
    ok.method_factory = lambda r: _FakeMethod(r, refuse=True)
    ok.readapt()
    for i in range(2):
        ok.process(_frame(seed=i), stamp=10 + 0.1 * i)
    ok.wait_idle(60)
    assert ok.phase == Phase.STREAMING and "previous adaptation keeps serving" in ok.status()["warning"]
    ok.process(_frame(seed=9))
    assert ok.last_source == "adapted"


def test_live_config_resolves_presets_and_overrides():
    d = LiveConfig(preset="default").ditta_config()
    assert d.adapt.params == "addon" and d.guard.enabled and d.max_gap == 0.2 and d.preset == "default"
    sel = LiveConfig().ditta_config()  # the default preset: three candidates, one chosen label-free
    assert sel.preset == "select" and sel.candidates == ("default", "decoder", "faithful")
    f = LiveConfig(preset="faithful", iters=2, guard=True).ditta_config()
    assert f.adapt.params == "decoder" and f.adapt.iters == 2 and f.max_gap == 0.0
    assert f.target.candidate == "backend" and not f.guard.enabled  # guard true keeps the preset's
    assert not LiveConfig(guard=False).ditta_config().guard.enabled
    with pytest.raises(ValueError, match="preset"):
        LiveConfig(preset="best").ditta_config()
    rt = LiveConfig(backend="openvino", openvino_precision="f32", torch_threads=2).runtime()
    assert (rt.backend, rt.openvino_precision, rt.threads) == ("openvino", "f32", 2)


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
        live.process(_frame(seed=i), stamp=0.1 * i)
    live.wait_idle(60)
    assert live.phase == Phase.STREAMING
    from ditta_ros.inference import Prediction

    scene = {"cls": 0}  # the streamed labels are all one class; the scene then switches to another
    live.serving._adapted = lambda frozen, interim, frame, stamp, started=None: (
        Prediction(np.full(frame.shape[:2], scene["cls"], np.uint8), np.ones(frame.shape[:2], np.float32)), "adapted")
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
    """backend openvino, ``wait_for_backend``: the warm-up labels come from the plain-ISS graph on
    OpenVINO from the first one on (equal to the torch ISS on >= 99 % of pixels), exported once per
    model and frame size; a restarted pipeline reuses that export; the adapted model streams on
    OpenVINO too."""
    import logging

    cfg = LiveConfig(warmup_frames=2, backend="openvino", export_dir=str(tmp_path / "export"),
                     engine_cache=str(tmp_path / "engines"), openvino_precision="f32", wait_for_backend=True)
    runner = _runner()
    live = LivePipeline(cfg, runner, method_factory=lambda r: _FakeMethod(r))
    with caplog.at_level(logging.INFO, logger="ditta"):
        pred, phase = live.process(_frame(seed=1), stamp=0.0)  # the first size: prepared before the label
    assert phase == Phase.WARMUP and "ISS model on openvino" in caplog.text
    assert live.status()["iss_runtime"] == "backend"
    assert (pred.labels == runner.predict(_frame(seed=1)).labels).mean() >= 0.99
    exports = sorted(p.name for p in (tmp_path / "export").rglob("*.onnx"))
    assert len(exports) == 1 and "_tau0_" in exports[0]
    # another size: torch's frame-wise ISS serves while its graph is prepared in the background
    small = _frame(30, 44, seed=5)
    quick, _ = live.process(small, stamp=0.05)
    assert live.status()["preparing"] == "iss 44x30" and np.array_equal(quick.labels, runner.predict(small).labels)
    live.wait_idle(120)
    assert live.serving.iss.ready_for((30, 44))
    for i in (2, 3):  # the size change restarted the warm-up window: two more frames fill it
        live.process(_frame(seed=i), stamp=0.05 * i)
    live.wait_idle(120)
    assert live.phase == Phase.STREAMING and "openvino" in live.last_adapt["backend"]
    assert live.process(_frame(seed=3), stamp=0.2)[1] == Phase.STREAMING and live.last_source == "adapted"
    # a restart: the plain-ISS export is found and reused, nothing new is written for it
    caplog.clear()
    again = LivePipeline(cfg, runner, method_factory=lambda r: _FakeMethod(r))
    with caplog.at_level(logging.INFO, logger="ditta"):
        again.process(_frame(seed=1), stamp=0.0)
        again.wait_idle(120)
    assert "reusing the export" in caplog.text
    assert len([p for p in (tmp_path / "export").rglob("*.onnx") if "_tau0_" in p.name and "40x56" in p.name]) == 1


def test_the_first_frame_is_answered_by_torch_while_the_graph_compiles(tmp_path, monkeypatch):
    """By default (``wait_for_backend`` false) a camera's first frames are answered at once by torch's
    frame-wise ISS while the serving graph is exported and compiled in the background (held here until
    released, so the order is certain); once it is ready the graph answers."""
    import threading

    from ditta_ros.runtime import ServedISS

    release, entered = threading.Event(), threading.Event()
    prepare = ServedISS.prepare

    def held(self, frame_hw):
        entered.set()
        assert release.wait(120)
        prepare(self, frame_hw)

    monkeypatch.setattr(ServedISS, "prepare", held)
    cfg = LiveConfig(adapt=False, backend="onnxruntime", export_dir=str(tmp_path / "export"),
                     engine_cache=str(tmp_path / "engines"))
    runner = _runner()
    live = LivePipeline(cfg, runner)
    for i in range(3):  # answered while the graph is held in preparation
        frame = _frame(seed=i)
        pred, phase = live.process(frame, stamp=0.1 * i)
        assert phase == Phase.ISS and np.array_equal(pred.labels, runner.predict(frame).labels)
        status = live.status()
        assert status["iss_runtime"] == "torch" and status["preparing"] == "iss 56x40"
    assert entered.is_set() and not live.serving.iss.prepared
    release.set()
    live.wait_idle(120)
    assert live.serving.iss.ready_for((40, 56))
    live.process(_frame(seed=4), stamp=0.4)
    assert live.status()["iss_runtime"] == "backend" and live.status()["preparing"] is None


class _SlowMethod(_FakeMethod):
    """Adapts for up to ``seconds`` unless its ``stop`` event is set (as DiTTAMethod's steps do);
    records how many run at once."""

    running, most = 0, 0

    def __init__(self, runner, seconds=20.0):
        super().__init__(runner)
        self.seconds, self.stop = seconds, None

    def adapt(self, frames, iss_preds=None, incumbent=None):
        import time

        from ditta_ros.ditta import AdaptationCancelled

        cls = type(self)
        cls.running += 1
        cls.most = max(cls.most, cls.running)
        try:
            end = time.monotonic() + self.seconds
            while time.monotonic() < end:
                if self.stop is not None and self.stop.is_set():
                    raise AdaptationCancelled("adaptation cancelled")
                time.sleep(0.02)
            return super().adapt(frames, iss_preds)
        finally:
            cls.running -= 1


def test_reset_during_adapting_stops_it_and_a_readapt_never_runs_two(tmp_path):
    import time

    cfg = LiveConfig(warmup_frames=2, backend="torch", checkpoint_dir=str(tmp_path))
    seconds = {"n": 30.0}
    live = LivePipeline(cfg, _runner(), method_factory=lambda r: _SlowMethod(r, seconds["n"]))
    for i in range(2):
        live.process(_frame(seed=i), stamp=0.1 * i)
    assert live.phase == Phase.ADAPTING
    time.sleep(0.2)
    live.reset()
    assert live.phase == Phase.ISS and live.readapt() == "warm-up started"
    seconds["n"] = 0.3
    for i in range(2):
        live.process(_frame(seed=i), stamp=0.1 * i)
    t0 = time.monotonic()
    live.wait_idle(30)
    assert time.monotonic() - t0 < 10  # the first one stopped at once instead of running its 30 s
    assert _SlowMethod.most == 1 and live.phase == Phase.STREAMING
    assert live.close(5)


def test_readapt_keeps_the_adapted_model_serving_and_warmup_predictions_reach_the_method(tmp_path):
    made = []

    def factory(r):
        made.append(_FakeMethod(r))
        return made[-1]

    live = LivePipeline(LiveConfig(warmup_frames=2, backend="torch", checkpoint_dir=str(tmp_path)), _runner(),
                        method_factory=factory)
    served = [live.process(_frame(seed=i), stamp=0.1 * i)[0] for i in range(2)]
    live.wait_idle(60)
    assert live.last_source == "iss" and made[0].iss_preds is not None  # the ISS ran once per warm-up frame
    assert made[0].interval == pytest.approx(0.1)  # the method streams the warm-up at the gap it was taken
    assert all(np.array_equal(p.labels, s.labels) for p, s in zip(made[0].iss_preds, served))
    assert live.phase == Phase.STREAMING and live.checkpoint and live.checkpoint.startswith(str(tmp_path))
    live.process(_frame(seed=3))
    assert live.last_source == "adapted"
    live.readapt()
    _, phase = live.process(_frame(seed=4))
    assert phase == Phase.WARMUP and live.last_source == "adapted"  # not the pre-trained model
    assert live.counters.by_model["adapted"] == 2


def test_a_saved_adaptation_restarts_in_streaming_and_checks_the_model(tmp_path, monkeypatch):
    import os

    import torch

    from ditta_ros.live import ParameterError

    live = _adapted()
    assert live.checkpoint and os.path.isfile(live.checkpoint)  # saved on reaching STREAMING
    before = {k: v.clone() for k, v in live.serving.frozen.net.state_dict().items()}
    with torch.no_grad():  # an adaptation that differs from the weights it started from
        for p in live.serving.frozen.net.addon.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = live.save(str(tmp_path / "home" / ".cache" / "ditta" / "adapted" /
                          "espnetv2-s2.0-cityscapes-1024x512_40x56_later.pt"))
    again = LivePipeline(LiveConfig(backend="torch", adapted_checkpoint=path), _runner(),
                         method_factory=lambda r: _FakeMethod(r))
    assert again.phase == Phase.STREAMING and again.checkpoint == path
    saved, loaded = live.serving.frozen.net.state_dict(), again.serving.frozen.net.state_dict()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    assert any(not torch.equal(loaded[k], before[k]) for k in loaded if k.startswith("addon."))
    live.serving.frozen.reset()
    ref = live.process(_frame(seed=1), stamp=0.0)[0]
    pred, phase = again.process(_frame(seed=1), stamp=0.0)
    assert phase == Phase.STREAMING and again.last_source == live.last_source == "adapted"
    assert np.array_equal(pred.labels, ref.labels) and np.allclose(pred.confidence, ref.confidence)
    latest = LivePipeline(LiveConfig(backend="torch", adapted_checkpoint="latest"),
                          _runner(), method_factory=lambda r: _FakeMethod(r))
    assert latest.checkpoint == path  # the newest of this model
    # made under `select` (the flow branch): served with it under a preset of another fusion too
    assert live.serving.frozen.config.fusion == "flow"
    other = LivePipeline(LiveConfig(backend="torch", preset="default", adapted_checkpoint=path), _runner(),
                         method_factory=lambda r: _FakeMethod(r))
    assert other.config.fusion == "grid" and other.serving.frozen.config.fusion == "flow"
    assert other.process(_frame(seed=1), stamp=0.0)[0].labels.tolist() == ref.labels.tolist()
    with pytest.raises(ParameterError, match="adapted_checkpoint.*an adaptation of model other"):
        LivePipeline(LiveConfig(model="other", backend="torch", adapted_checkpoint=path), _runner(),
                     method_factory=lambda r: _FakeMethod(r))
    with pytest.raises(ParameterError, match="'latest' needs a saved adaptation"):
        LivePipeline(LiveConfig(backend="torch", adapted_checkpoint="latest", checkpoint_dir=str(tmp_path / "no")),
                     _runner(), method_factory=lambda r: _FakeMethod(r))
    # a failed write leaves neither a checkpoint nor a temporary file
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        live.save(str(tmp_path / "broken.pt"))
    assert not list(tmp_path.glob("broken.pt*")) and not list(tmp_path.glob(".broken.pt*"))


def test_a_nan_producing_adapted_model_falls_back_to_the_iss_and_is_dropped(caplog):
    import logging

    from ditta_ros.live import NONFINITE_LIMIT

    import copy

    live = _adapted()
    broken = copy.deepcopy(live.serving.frozen.net)  # its own copy: the ISS model must stay finite
    for p in broken.iss.parameters():
        p.data.fill_(float("nan"))
    frozen = live.serving.freeze(broken)
    frozen.prepare((40, 56))
    live.serving.install(frozen)
    with caplog.at_level(logging.WARNING, logger="ditta"):
        for i in range(NONFINITE_LIMIT + 3):
            pred, _ = live.process(_frame(seed=i), stamp=i * 0.05)
            assert np.isfinite(pred.confidence).all()
    assert live.counters.by_model["fallback"] == NONFINITE_LIMIT
    assert live.phase == Phase.ISS and "non-finite" in live.warning and "non-finite output" in caplog.text
    assert live.last_source == "iss"


def test_frame_loop_counts_drops_and_bad_messages_and_carries_on():
    from ditta_ros.imgmsg import UnsupportedEncoding
    from ditta_ros.live import FrameLoop

    live = LivePipeline(LiveConfig(adapt=False, backend="torch", iss_backend=False), _runner())
    published, warned = [], []

    def decode(msg):
        if msg == "bayer":
            raise UnsupportedEncoding("unsupported image encoding 'bayer'")
        if msg == "nan":
            return np.zeros((4, 4), np.float32), 0.0
        return _frame(seed=int(msg)), float(msg)

    loop = FrameLoop(live, lambda m, lab, conf, src: published.append((m, lab.shape, src)),
                     output_resolution="network", warn=warned.append, decode=decode)
    loop.offer("1")
    loop.offer("2")  # replaces "1", which is dropped
    assert loop.step(1.0) and not loop.step(0.05)
    assert published == [("2", (48, 64), "iss")]  # at the network's input size
    for msg in ("bayer", "bayer", "nan"):
        loop.offer(msg)
        assert loop.step(1.0)
    assert live.counters.dropped == 1 and live.counters.bad == 3 and live.counters.frames_out == 1
    assert live.counters.bad_reasons == {"unsupported_encoding": 2, "bad_output": 1}
    assert len(warned) == 2  # one warning per unknown encoding, one per other bad message
    loop.enabled = False
    loop.offer("4")
    assert live.counters.paused == 1


def test_frame_loop_overlaps_frames_on_a_pipelined_backend(tmp_path, monkeypatch):
    """``openvino_streams`` 2 and a camera faster than the node: the loop starts the waiting frame before it
    fuses and publishes the one in hand (each start one frame ahead of the finishes), publishes every frame
    in order, and the labels equal those of one request per frame."""
    from ditta_ros.live import FrameLoop
    from ditta_ros.runtime.openvino import PipelinedOpenVINO

    def streaming(streams):
        cfg = LiveConfig(warmup_frames=2, backend="openvino", openvino_precision="f32", openvino_streams=streams,
                         wait_for_backend=True, flow_while_adapting=False, export_dir=str(tmp_path / "export"),
                         engine_cache=str(tmp_path / "engines"))
        live = LivePipeline(cfg, _runner(), method_factory=lambda r: _FakeMethod(r))
        for i in range(2):
            live.process(_frame(seed=i), stamp=0.05 * i)
        live.wait_idle(120)
        assert live.phase == Phase.STREAMING
        return live

    base = _frame(40, 64, seed=7)
    frames = [np.ascontiguousarray(base[:, k:k + 56]) for k in range(7)]  # a camera panning 1 px a frame
    stamps = [0.1 + 0.05 * k for k in range(len(frames))]
    ref_live = streaming(1)
    ref = [ref_live.process(f, stamp=s)[0].labels for f, s in zip(frames, stamps)]
    live = streaming(2)
    assert isinstance(live.serving.frozen.backend, PipelinedOpenVINO)
    calls, index = [], {id(f): k for k, f in enumerate(frames)}
    start, finish = PipelinedOpenVINO.start, PipelinedOpenVINO.finish

    def spy_start(self, frame):
        handle = start(self, frame)
        calls.append(("start", index[id(frame)], handle))
        return handle

    def spy_finish(self, handle, state=None):
        calls.append(("finish", next(k for c, k, h in calls if c == "start" and h == handle), handle))
        return finish(self, handle, state)

    monkeypatch.setattr(PipelinedOpenVINO, "start", spy_start)
    monkeypatch.setattr(PipelinedOpenVINO, "finish", spy_finish)
    published = []

    def decode(msg):
        k = int(msg)
        if k + 1 < len(frames):
            loop.offer(str(k + 1))  # the next frame is already waiting when this one is decoded
        return frames[k], stamps[k]

    loop = FrameLoop(live, lambda m, lab, conf, src: published.append((m, lab, src)), decode=decode)
    loop.offer("0")
    while loop.step(0.05):
        pass
    assert [m for m, _, _ in published] == [str(k) for k in range(len(frames))]
    assert all(src == "adapted" for _, _, src in published) and live.counters.dropped == 0
    assert all(np.array_equal(lab, r) for (_, lab, _), r in zip(published, ref))
    order = [(c, k) for c, k, _ in calls]
    assert order[:3] == [("start", 0), ("start", 1), ("finish", 0)]  # frame 1 started before frame 0 fused
    assert [k for c, k in order if c == "finish"] == list(range(len(frames)))
    assert sum(c == "start" for c, _ in order) == len(frames)  # no frame's stateless part ran twice
    calls.clear()  # a camera slower than the node: nothing waits, the frame is served alone on all cores
    loop.decode = lambda msg: (frames[0], stamps[-1] + 0.05)
    loop.offer("0")
    assert loop.step(1.0) and calls == [] and len(published) == len(frames) + 1
    # a frame started ahead is counted, never lost: paused when the loop is disabled, dropped at a stop
    loop.decode = decode
    for end in ("pause", "stop"):
        loop.offer("4")  # decoding 4 leaves 5 waiting: 4 is published, 5 started ahead
        assert loop.step(1.0) and published[-1][0] == "4" and loop._ahead is not None
        paused, dropped = live.counters.paused, live.counters.dropped
        if end == "pause":
            loop.enabled = False
            assert loop.step(0.05) and live.counters.paused == paused + 1
            loop.enabled = True
        else:
            loop.stop()
            assert live.counters.dropped == dropped + 1
        assert loop._ahead is None and published[-1][0] == "4"


def test_lazy_loop_processes_nothing_unwatched_after_the_warm_up_and_reports_timing():
    """``wanted`` false: outside the warm-up a message is neither decoded nor inferred, only counted as
    idle; the first message after a subscriber appears is answered. In the warm-up frames are still
    taken (the adaptation needs them). ``timing`` gets the steady-clock processing and latency."""
    from ditta_ros.live import FrameLoop, LiveConfig, LivePipeline
    from ditta_ros.live.phases import Phase

    live = LivePipeline(LiveConfig(adapt=False, backend="torch", iss_backend=False), _runner())
    decoded, published, timings, watched = [], [], [], [False]

    def decode(msg):
        decoded.append(msg)
        return _frame(seed=int(msg)), float(msg)

    loop = FrameLoop(live, lambda m, lab, conf, src: published.append(m), decode=decode,
                     wanted=lambda: watched[0], timing=lambda p, l: timings.append((p, l)))
    assert live.phase == Phase.ISS
    for msg in ("1", "2"):
        loop.offer(msg)
        assert loop.step(1.0)
    assert decoded == [] and published == [] and live.counters.idle == 2 and live.counters.frames_out == 0
    watched[0] = True
    loop.offer("3")
    assert loop.step(1.0) and published == ["3"] and live.counters.idle == 2
    assert len(timings) == 1 and 0 < timings[0][0] <= timings[0][1]  # processing within receive-to-publish
    assert loop.status()["processing_ms"] > 0 and "idle" in loop.status()
    watched[0] = False
    live.phase = Phase.WARMUP  # the warm-up still runs unwatched
    loop.offer("4")
    assert loop.step(1.0) and decoded[-1] == "4" and published[-1] == "4" and live.counters.idle == 2


def test_health_is_recomputed_each_period():
    from ditta_ros.live import Health

    h = Health(stale_seconds=5.0, min_fps=2.0)
    h._started = 0.0
    st = {"state": "STREAMING", "frames_in": 0, "frames_out": 0, "bad": 0, "by_model": {"fallback": 0},
          "fps": 0.0, "enabled": True, "warning": None, "error": None, "model": None}
    assert h.update(st, None, now=1.0)[0] == Health.OK
    assert h.update(st, None, now=6.0)[0] == Health.WARN  # no image yet
    st.update(frames_in=10, frames_out=10, fps=5.0)
    assert h.update(st, 6.9, now=7.0) == (Health.OK, "STREAMING, 10.0 fps, model None")  # this period's rate
    st.update(frames_in=20, frames_out=18, bad=2)
    level, msg = h.update(st, 7.9, now=8.0)
    assert level == Health.WARN and "2 bad messages" in msg
    st.update(frames_in=25, frames_out=18, bad=7)
    assert h.update(st, 8.9, now=9.0)[0] == Health.ERROR  # images in, nothing out, bad ones
    st.update(frames_in=30, frames_out=23)
    assert h.update(st, 9.9, now=10.0)[0] == Health.OK  # fine again: the error clears
    st.update(frames_in=35)
    level, msg = h.update(st, 10.4, now=10.5)
    assert level == Health.WARN and "none out" in msg  # a stalled loop, no bad message
    assert h.update(st, 10.4, now=20.0)[0] == Health.ERROR  # stale input
    st.update(frames_in=37, frames_out=24)
    level, msg = h.update(st, 20.9, now=21.0)
    assert level == Health.WARN and "1.0 fps < 2" in msg  # this period's rate, not a stale average
    st.update(frames_in=40, frames_out=27, error="RuntimeError: teacher weights missing")
    assert h.update(st, 21.9, now=22.0)[0] == Health.WARN
    st.update(frames_in=43, frames_out=30, error=None)
    assert h.update(st, 22.9, now=23.0)[0] == Health.OK
    st.update(frames_in=53, idle=10)  # nobody subscribes: unprocessed images are neither in nor out
    level, msg = h.update(st, 23.9, now=24.0)
    assert level == Health.OK and "no subscriber: 10 images not processed" in msg


def test_core_logging_is_forwarded_to_another_logger():
    import logging

    from ditta_ros.live import LogForwarder

    class Target:
        def __init__(self):
            self.lines = []

        def __getattr__(self, level):
            return lambda msg: self.lines.append((level, msg))

    target = Target()
    handler = LogForwarder(target)
    logger = logging.getLogger("ditta.test_forward")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.info("hello %d", 1)
        logger.warning("careful")
    finally:
        logger.removeHandler(handler)
    assert target.lines == [("info", "[ditta.test_forward] hello 1"), ("warning", "[ditta.test_forward] careful")]


def test_a_readaptation_refits_a_refittable_engine_instead_of_building_another(monkeypatch, tmp_path):
    """TensorRT engines are refittable (``swap_weights``): the re-adapted weights go into the
    engine that serves the size already; no second engine is built."""
    import ditta_ros.runtime.serving as rt
    from ditta_ros.presets import DittaConfig
    from ditta_ros.runtime import FrozenDiTTA, RuntimeOptions

    config, trt = DittaConfig.from_preset("default", tau=0.8), RuntimeOptions(backend="tensorrt")

    class Engine:
        name = "tensorrt"

        def __init__(self, hw):
            self.frame_hw, self.swapped = hw, []

        def swap_weights(self, path):
            self.swapped.append(path)

        def describe(self):
            return "fake refittable engine"

    built, exported, held = [], [], []
    runner = _runner()
    first = FrozenDiTTA(DiTTANet(runner.model).eval(), config, trt)

    def export(net, hw, *a, **k):
        held.append(("export", first.lock.locked()))
        exported.append(net)
        return str(tmp_path / "m.onnx")

    class Refittable(Engine):
        def swap_weights(self, path):
            held.append(("swap", first.lock.locked()))
            super().swap_weights(path)

    monkeypatch.setattr(rt, "cached_export", export)
    monkeypatch.setattr(rt, "select_backend", lambda *a, **k: built.append(Refittable((40, 56))) or built[-1])
    first.prepare((40, 56))
    second = FrozenDiTTA(DiTTANet(runner.model).eval(), config, trt)
    second.prepare((40, 56), previous=first)
    assert len(built) == 1 and second.backend is first.backend and built[0].swapped == [str(tmp_path / "m.onnx")]
    assert exported[-1] is second.net  # the new weights were exported for the refit
    # the export runs while the serving model may still step; only the swap waits for its step
    assert held[-2:] == [("export", False), ("swap", True)]
    third = FrozenDiTTA(DiTTANet(runner.model).eval(), config, trt)
    third.prepare((30, 44), previous=first)  # another size: a new engine
    assert len(built) == 2

    from ditta_ros.runtime.tensorrt import RefitRefused

    def readapt_with(error):
        """A serving model whose engine's refit raises ``error``, and its re-adaptation."""

        class Failing(Refittable):
            def swap_weights(self, path):
                raise error

        monkeypatch.setattr(rt, "select_backend", lambda *a, **k: built.append(Failing((40, 56))) or built[-1])
        old = FrozenDiTTA(DiTTANet(runner.model).eval(), config, trt)
        old.prepare((40, 56))
        new = FrozenDiTTA(DiTTANet(runner.model).eval(), config, trt)
        new.prepare((40, 56), previous=old)
        assert new.backend is not old.backend  # a new engine either way
        return old

    old = readapt_with(RuntimeError("refit failed"))  # the old engine may hold part of the weights
    assert "refit failed" in old.backend.unusable
    with pytest.raises(RuntimeError, match="unusable"):
        old.step(_frame())
    old = readapt_with(RefitRefused("graph differs"))  # refused before touching the engine: it keeps serving
    assert getattr(old.backend, "unusable", None) is None


def test_a_new_frame_size_prepares_the_served_adaptation_with_its_own_fusion():
    """A saved adaptation made for another fusion than the preset's keeps it when a new frame size is prepared."""
    live = _adapted()
    served = live.serving.frozen
    own = "memory" if served.config.fusion != "memory" else "flow"
    live.serving.install(live.serving.freeze(served.net, served.trained_gap, own))
    live.process(_frame(30, 44, seed=5))  # a new size: prepared in the background while the ISS serves
    live.wait_idle(60)
    live.serving.join(60)
    assert live.serving.frozen.frame_hw == (30, 44) and live.serving.frozen.config.fusion == own


def test_a_failing_adapted_backend_falls_back_and_a_failed_preparation_is_not_retried(caplog):
    import logging

    live = _adapted()
    live.process(_frame(seed=1))
    assert live.last_source == "adapted"

    class Failing:
        frame_hw = (40, 56)

        def step(self, frame, state):
            raise RuntimeError("CUDA error: an illegal memory access")

        def describe(self):
            return "failing"

    live.serving.frozen.backend = Failing()
    pred, _ = live.process(_frame(seed=2))
    assert live.last_source == "fallback" and pred.labels.shape == (40, 56)
    assert live.counters.by_model["fallback"] == 1
    # a new frame size whose preparation fails: the ISS serves, the failure is not retried every frame
    calls = []

    def broken_freeze(net, trained_gap=None, fusion=None):
        calls.append(net)
        raise RuntimeError("no engine for this size")

    live.serving.freeze = broken_freeze
    with caplog.at_level(logging.ERROR, logger="ditta"):
        for i in range(4):
            pred, _ = live.process(_frame(30, 44, seed=i))
            live.wait_idle(30)
            assert pred.labels.shape == (30, 44) and live.last_source == "iss"
    assert len(calls) == 1 and "adapted 44x30" in live.status()["error"]
    live.reset()
    assert live.status()["error"] is None and live.status()["warning"] is None  # errors clear on reset


def test_after_a_checkpoint_start_the_iss_for_a_new_size_is_prepared_in_the_background(tmp_path):
    """Started from a checkpoint (labels already served), a new frame size never exports on the
    calling thread: torch's ISS answers at once, OpenVINO graphs are prepared in the background."""
    import time

    live = _adapted()
    path = live.save(str(tmp_path / "a.pt"))
    cfg = LiveConfig(backend="openvino", openvino_precision="f32", adapted_checkpoint=path,
                     export_dir=str(tmp_path / "export"), engine_cache=str(tmp_path / "engines"))
    runner = _runner()
    again = LivePipeline(cfg, runner, method_factory=lambda r: _FakeMethod(r))
    assert again.phase == Phase.STREAMING and again.serving.frozen.ready_for((40, 56))
    again.process(_frame(seed=1), stamp=0.0)
    assert again.last_source == "adapted"
    small = _frame(30, 44, seed=2)
    t0 = time.perf_counter()
    pred, _ = again.process(small, stamp=0.05)
    quick = time.perf_counter() - t0
    assert again.last_source == "iss" and again.status()["preparing"] == "adapted 44x30"
    assert np.array_equal(pred.labels, runner.predict(small).labels)  # torch's frame-wise ISS
    again.wait_idle(120)
    again.process(small, stamp=0.1)
    assert again.last_source == "adapted" and quick < 5.0
    assert any("30x44" in p.name for p in (tmp_path / "export").rglob("*.onnx"))
    again.reset()  # the ISS for this size: prepared in the background too, torch serves meanwhile
    pred, _ = again.process(small, stamp=0.15)
    # torch's ISS answered at once; the graph is prepared in the background (quick when the plain graph of this
    # size was exported with the adapted one: it may be done already)
    assert again.status()["preparing"] in ("iss 44x30", None)
    assert np.array_equal(pred.labels, runner.predict(small).labels)
    again.wait_idle(120)
    assert again.serving.iss.ready_for((30, 44))


def test_an_adaptation_that_could_never_serve_is_skipped_without_the_teacher():
    """Only the add-on adapts (default preset) and the warm-up frames are 0.5 s apart, beyond max_gap
    (0.2 s): the add-on could never fuse, so the method is not even built; the ISS serves and says why."""
    built = []
    live = LivePipeline(LiveConfig(warmup_frames=3, backend="torch", preset="default"), _runner(),
                        method_factory=lambda r: built.append(r) or _FakeMethod(r))
    for i in range(3):
        live.process(_frame(seed=i), stamp=0.5 * i)
    live.wait_idle(30)
    assert live.phase == Phase.ISS and not built
    assert "never fuses at this frame gap (0.50 s > max_gap 0.2 s)" in live.status()["warning"]
    fast = _adapted()  # the default 0.1 s apart: adapted as usual
    assert fast.phase == Phase.STREAMING


class _SelectingFake(_FakeMethod):
    """A selecting method: on a re-adaptation it is handed the serving network and reports a choice."""

    choice = "default"

    def adapt(self, frames, iss_preds=None, incumbent=None):
        info = super().adapt(frames, iss_preds)
        self.incumbent = incumbent
        cands = {"default": {}} if incumbent is None else {"serving": {}, "default": {}}
        self.refused = self.choice is None
        info["selection"] = {"chosen": self.choice, "why": f"{self.choice} chosen", "candidates": cands}
        if self.choice == "serving":
            self.net = incumbent
        return info


def test_a_readaptation_judges_the_serving_model_and_readapt_period_starts_it():
    """``readapt_period`` starts a re-adaptation after that many seconds of stream time; the method gets the
    serving network; "serving" chosen keeps the same model serving (not re-installed, not saved again);
    no admissible candidate, the serving one included, returns to the ISS; a reset disarms the period."""
    made = []

    def factory(r):
        made.append(_SelectingFake(r))
        return made[-1]

    live = LivePipeline(LiveConfig(warmup_frames=2, backend="torch", checkpoint_dir="", readapt_period=1.0), _runner(),
                        method_factory=factory)
    t = [0.0]

    def step(n=1):
        for _ in range(n):
            live.process(_frame(seed=int(t[0] * 10)), stamp=t[0])
            t[0] += 0.25
            live.wait_idle(60)

    step(2)
    assert live.phase == Phase.STREAMING and made[0].incumbent is None
    first = live.serving.frozen
    step(4)  # 0.75 s of stream time since the first served frame: not yet
    assert live.phase == Phase.STREAMING and len(made) == 1
    step(1)  # 1.0 s: a new warm-up starts
    assert live.phase == Phase.WARMUP
    _SelectingFake.choice = "serving"
    step(2)
    assert made[1].incumbent is first.net and live.phase == Phase.STREAMING and live.serving.frozen is first
    assert live.status()["last_adaptation"]["backend"].startswith("previous adaptation (kept")
    _SelectingFake.choice = None
    step(7)  # 1 s after the first served frame a warm-up starts; its two frames follow
    assert len(made) == 3 and live.phase == Phase.ISS and live.serving.frozen is None  # the serving one failed too
    _SelectingFake.choice = "default"
    live.reset()
    step(8)
    assert len(made) == 3 and live.phase == Phase.ISS  # no period after a reset


def test_the_heap_freed_by_an_adaptation_goes_back_to_the_os():
    """``release_heap`` after each adaptation: on glibc it runs ``malloc_trim``; memory a worker thread
    freed (as the teacher and the training do) is returned, so the resident size drops."""
    import threading

    from ditta_ros.live.pipeline import release_heap

    def rss_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    kept = []

    def churn():  # ~240 MB of small blocks in this thread's arena; a few survive (as a model's tensors do)
        blocks = [bytearray(4096) for _ in range(60_000)]
        kept.extend(blocks[::1000])
        del blocks

    t = threading.Thread(target=churn)
    t.start()
    t.join()
    before = rss_mb()
    assert release_heap() is True  # this machine's libc is glibc
    assert before - rss_mb() > 100, (before, rss_mb())  # glibc had kept the freed blocks


class _GatedMethod(_FakeMethod):
    """An adaptation that ends when the test opens its gate (then as :class:`_FakeMethod`)."""

    def __init__(self, runner, gate, **fake):
        super().__init__(runner, **fake)
        self.gate, self.stop = gate, None

    def adapt(self, frames, iss_preds=None, incumbent=None):
        from ditta_ros.ditta import AdaptationCancelled

        self.incumbent = incumbent
        while not self.gate.wait(0.02):
            if self.stop is not None and self.stop.is_set():
                raise AdaptationCancelled("adaptation cancelled")
        return super().adapt(frames, iss_preds)


def _adapting(gate, cfg=None, made=None, **fake):
    """A pipeline whose first adaptation waits for ``gate``, after a warm-up of 2 frames 0.1 s apart, with
    the ISS graph's background preparation (started by the first frame) finished."""
    def factory(r):
        method = _GatedMethod(r, gate, **fake)
        if made is not None:
            made.append(method)
        return method

    live = LivePipeline(cfg or LiveConfig(warmup_frames=2, backend="torch", checkpoint_dir=""), _runner(),
                        method_factory=factory)
    for i in range(2):
        live.process(_frame(seed=i), stamp=0.1 * i)
    assert live.phase == Phase.ADAPTING and live.serving.join(60)
    return live


@pytest.mark.parametrize("ending", ["adapted", "refused", "failed"])
def test_the_iss_with_the_flow_branch_serves_while_the_first_adaptation_runs(ending):
    import copy
    import threading

    gate, made = threading.Event(), []
    live = _adapting(gate, made=made, refuse=ending == "refused", fail=ending == "failed")
    assert live.config.fusion == "flow"  # the default preset, select
    live.process(_frame(seed=2), stamp=0.2)  # the ISS answers while the interim is prepared
    assert live.last_source == "iss"
    assert live.serving.join(60) and live.serving.interim
    # the pre-trained model with the flow branch, as an independent freeze of it serves the same frames
    ref = live.serving.freeze(DiTTANet(copy.deepcopy(live.runner.model)).eval(), 0.1)
    ref.prepare((40, 56))
    for k, (seed, stamp) in enumerate([(3, 0.3), (4, 0.4), (5, 0.5)]):
        pred, phase = live.process(_frame(seed=seed), stamp=stamp)
        assert phase == Phase.ADAPTING and live.last_source == "iss-flow"
        assert np.array_equal(pred.labels, ref.step(_frame(seed=seed), None if k == 0 else 0.1).labels)
    st = live.status()
    assert st["model"] == "iss-flow" and st["by_model"]["iss-flow"] == 3 and st["fused_share"] == pytest.approx(2 / 3, abs=1e-3)
    with pytest.raises(RuntimeError, match="no adapted model to save"):  # the interim is no adaptation
        live.save("/tmp/never.pt")
    gate.set()
    live.wait_idle(60)
    assert made[0].incumbent is None  # the interim is not judged beside the candidates
    live.process(_frame(seed=6), stamp=0.6)
    if ending == "adapted":
        assert live.phase == Phase.STREAMING and not live.serving.interim and live.last_source == "adapted"
    else:  # refused by the selector or guard, or failed: the frame-wise ISS serves, as offline
        assert live.phase == Phase.ISS and live.serving.frozen is None and live.last_source == "iss"
    assert live.close(5)


@pytest.mark.parametrize("cfg", [LiveConfig(warmup_frames=2, backend="torch", checkpoint_dir="", flow_while_adapting=False),
                                 LiveConfig(warmup_frames=2, backend="torch", checkpoint_dir="", preset="default")])
def test_no_interim_without_the_flow_fusion_or_when_turned_off(cfg):
    import threading

    gate = threading.Event()
    live = _adapting(gate, cfg)
    for i in range(2, 5):
        live.process(_frame(seed=i), stamp=0.1 * i)
        assert live.serving.join(60)
    assert live.last_source == "iss" and live.serving.frozen is None and live.counters.by_model["iss-flow"] == 0
    gate.set()
    live.wait_idle(60)
    assert live.close(5)


def test_a_reset_while_the_interim_serves_returns_to_the_iss():
    import threading

    gate = threading.Event()
    live = _adapting(gate)
    live.process(_frame(seed=2), stamp=0.2)
    assert live.serving.join(60) and live.serving.interim
    assert live.close(5) is True and not live.serving.interim  # close() leaves no interim behind
    live = _adapting(gate)
    live.process(_frame(seed=2), stamp=0.2)
    assert live.serving.join(60) and live.serving.interim
    assert live.process(_frame(seed=3), stamp=0.3) and live.last_source == "iss-flow"
    live.reset()
    assert live.phase == Phase.ISS and live.serving.frozen is None
    live.process(_frame(seed=4), stamp=0.4)
    assert live.last_source == "iss"
    gate.set()
    assert live.close(5)


def test_an_interim_ready_after_the_adaptation_ended_is_not_installed(monkeypatch):
    """The interim's preparation outlasts the adaptation: the adapted model serves, the late interim is dropped."""
    import threading

    from ditta_ros.runtime import FrozenDiTTA

    gate, release = threading.Event(), threading.Event()
    live = _adapting(gate)
    prepare = FrozenDiTTA.prepare

    def slow_prepare(self, frame_hw, previous=None):
        if threading.current_thread().name == "ditta-prepare":  # the interim's, not the adaptation's own
            release.wait(60)
        return prepare(self, frame_hw, previous)

    monkeypatch.setattr(FrozenDiTTA, "prepare", slow_prepare)
    live.process(_frame(seed=2), stamp=0.2)
    assert live.serving.preparing == "iss-flow 56x40"
    gate.set()
    live._worker.join(60)
    assert live.phase == Phase.STREAMING
    release.set()
    assert live.serving.join(60) and not live.serving.interim and live.serving.adapted is not None
    live.process(_frame(seed=3), stamp=0.3)
    assert live.last_source == "adapted" and live.counters.by_model["iss-flow"] == 0
    assert live.close(5)
