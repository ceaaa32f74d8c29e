"""The streaming model equals the official two-frame formulation, and its ONNX export
matches torch over a sequence with the state carried."""

import numpy as np
import pytest
import torch

from ditta_ros.adapt import DiTTANet
from ditta_ros.addon import fuse
from ditta_ros.iss.base import logits_to_frame, plain_step
from ditta_ros.iss.espnetv2 import ESPNetv2Seg
from ditta_ros.streaming import StreamingDiTTA


def _net():
    torch.manual_seed(0)
    iss = ESPNetv2Seg(s=0.5, num_classes=5, input_size=(64, 48)).eval()
    for m in iss.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return DiTTANet(iss).eval()


def _frames(n=4, h=40, w=56):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (h, w + n, 3), dtype=np.uint8)
    return [np.ascontiguousarray(base[:, t:t + w]) for t in range(n)]


def _two_fusions(*fusions, hw=(100, 130)):
    """``(net, hw, two frames, one StreamingDiTTA per fusion)`` over one tiny network."""
    net = _net()
    return net, hw, _frames(2, *hw), tuple(StreamingDiTTA(net, hw, fusion=f) for f in fusions)


@pytest.mark.parametrize("dense", [False, True])
def test_streaming_equals_two_frame_clip_formulation(dense):
    from ditta_ros.streaming import two_frame_step

    net = _net()
    model = StreamingDiTTA(net, (40, 56))
    frames = [torch.from_numpy(f) for f in _frames()]
    state, prev = None, None
    for f in frames:
        labels, conf, state = model.step(f, state)
        ref_labels, ref_conf = two_frame_step(model, prev, f, dense=dense)
        assert (labels != ref_labels).float().mean() < 1e-3
        assert (conf - ref_conf).abs().max() < 1e-4
        assert labels.shape == (40, 56) and 0 <= conf.min() and conf.max() <= 1
        prev = f
    with pytest.raises(ValueError, match="uint8 frame"):
        model.step(np.zeros((10, 10, 3), np.uint8))


def test_two_frame_reference_matches_an_independent_formulation():
    """The reference itself, spelled out by hand for one step with a grid stride of 2."""
    import torch.nn.functional as F

    from ditta_ros.addon import dense_window_attention
    from ditta_ros.streaming import two_frame_step

    net = _net()
    assert net.addon.grid_stride == 2  # ESPNetv2
    model = StreamingDiTTA(net, (40, 56))
    f0, f1 = (torch.from_numpy(f) for f in _frames(2))
    x0, x1 = model.preprocess(f0), model.preprocess(f1)
    with torch.no_grad():
        feats, logits = net.iss(torch.cat([x0, x1]))
        pool = [F.avg_pool2d(t, 2, 2, ceil_mode=True) for t in (feats[1:], feats[:1], logits[:1])]
        q = net.addon.query_layer(pool[0].permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        k = net.addon.key_layer(pool[1].permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        add = F.interpolate(dense_window_attention(q, k, pool[2], net.addon.radius), size=feats.shape[2:],
                            mode="bilinear", align_corners=False)
        p = torch.softmax(logits_to_frame(net.iss, logits[1:], model.input_hw, (40, 56)), 1)
        pa = torch.softmax(logits_to_frame(net.iss, add, model.input_hw, (40, 56)), 1)
        prob, _ = fuse(p, pa, 0.8)
    labels, _ = two_frame_step(model, f0, f1)
    assert (labels != prob[0].argmax(0)).float().mean() < 1e-3


def test_preprocessing_matches_the_iss_reference_within_one_grey_level():
    net = _net()
    for hw in ((40, 56), (100, 130)):  # upscale, and downscale (antialiased) to 48x64
        model = StreamingDiTTA(net, hw)
        f = _frames(1, *hw)[0]
        ours = model.preprocess(torch.from_numpy(f))
        ref = net.iss.preprocess(f)  # PIL bilinear
        std = torch.tensor(net.iss.preprocess.std).view(1, 3, 1, 1)
        assert ours.shape == ref.shape
        assert ((ours - ref) * std * 255).abs().max() <= 1.0 + 1e-3


@pytest.mark.parametrize("hw,fusion", [((40, 56), "frame"), ((100, 130), "frame"), ((100, 130), "grid"),
                                       ((100, 130), "flow"), ((100, 130), "memory"), ((100, 130), "bayes")])
def test_onnx_export_matches_torch_over_a_sequence(tmp_path, hw, fusion):
    import onnxruntime as ort

    from ditta_ros.export import export_onnx

    net = _net()
    model = StreamingDiTTA(net, hw, fusion=fusion)
    path, _ = export_onnx(net, hw, str(tmp_path), "tiny", fusion=fusion)  # opset 18, antialiased resize
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    state_t, state_o = None, model.initial_state()
    state_o = [s.numpy() for s in state_o]
    agree = []
    for f in _frames(5, *hw):
        labels_t, _, state_t = model.step(f, state_t)
        feed = {"image": f, "feat_prev": state_o[0], "logits_prev": state_o[1], "has_prev": state_o[2]}
        out = sess.run(None, {i.name: feed[i.name] for i in sess.get_inputs()})  # flow: no feat_prev
        assert np.abs(out[3] - state_t[1].numpy()).max() <= 1e-4
        agree.append((out[0] == labels_t.numpy()).mean())
        state_o = [out[2], out[3], np.ones(hw, np.float32)]
    assert min(agree) >= 0.999


def test_grid_fusion_is_eq3_with_the_addon_branch_on_its_grid():
    """``fusion="grid"``: the plain branch and Eq. 3 unchanged; the add-on branch's softmax and
    reliability taken on the add-on grid and resized to the frame (checked against an explicit
    computation); labels differ from the frame-resolution form only near class boundaries."""
    import torch.nn.functional as F

    from ditta_ros.addon import normalised_reliability, softmax_entropy

    net, hw, frames, (grid, frame) = _two_fusions("grid", "frame")
    _, _, state = grid.step(frames[0])
    with torch.no_grad():
        labels, conf, _, _ = grid(torch.from_numpy(frames[1]), *state)
        x = grid.preprocess(torch.from_numpy(frames[1]))
        feats = net.iss.decode(net.iss.encode(x))
        p = torch.softmax(logits_to_frame(net.iss, net.iss.classify(feats), grid.input_hw, hw), 1)
        pa, ea = softmax_entropy(net.addon.attend(net.addon.pool(feats), state[0], state[1]))  # pooled state
        ra = F.interpolate(normalised_reliability(ea)[:, None], size=hw, mode="bilinear", align_corners=False)[:, 0]
        ref, _ = fuse(p, F.interpolate(pa, size=hw, mode="bilinear", align_corners=False), grid.tau, None, ra)
        other = frame(torch.from_numpy(frames[1]), *state)[0]
    assert (labels == ref[0].argmax(0)).float().mean() >= 0.999
    assert (labels == other).float().mean() >= 0.9
    with pytest.raises(ValueError, match="fusion"):
        StreamingDiTTA(net, hw, fusion="pixels")


def _flow_eq3_reference(model, frame, state):
    """``(plain probabilities, Eq. 3 fusion)`` at frame size, computed by hand for a flow fusion: the frame's plain
    probabilities fused with the state's logits (on whatever grid they are) resized to the frame."""
    import torch.nn.functional as F

    from ditta_ros.addon import normalised_reliability, softmax_entropy

    net, hw = model.net, model.frame_hw
    x = model.preprocess(torch.from_numpy(frame))
    p = torch.softmax(logits_to_frame(net.iss, net.iss.classify(net.iss.decode(net.iss.encode(x))), model.input_hw,
                                      hw), 1)
    pa, ea = softmax_entropy(state[1])
    ra = F.interpolate(normalised_reliability(ea)[:, None], size=hw, mode="bilinear", align_corners=False)[:, 0]
    return p, fuse(p, F.interpolate(pa, size=hw, mode="bilinear", align_corners=False), model.tau, None, ra)[0]


def test_flow_fusion_is_eq3_with_the_moved_previous_logits_as_the_temporal_branch():
    """``fusion="flow"``: the temporal branch is the previous frame's plain logits on the add-on grid
    (as the caller passes them, i.e. already moved by the flow), no attention; the add-on's weights do
    not matter; ``has_prev = 0`` gives the plain branch exactly; the same frame twice keeps its labels."""
    net = _net()
    hw = (100, 130)
    frames = _frames(2, *hw)
    flow = StreamingDiTTA(net, hw, fusion="flow")
    _, _, state = flow.step(frames[0])
    with torch.no_grad():
        labels, conf, _, _ = flow(torch.from_numpy(frames[1]), *state)
        p, ref = _flow_eq3_reference(flow, frames[1], state)
        assert torch.equal(labels, ref[0].argmax(0))
        for prm in net.addon.parameters():  # the add-on plays no part
            prm.add_(torch.randn_like(prm))
        assert torch.equal(flow(torch.from_numpy(frames[1]), *state)[0], labels)
        plain = flow(torch.from_numpy(frames[1]), state[0], state[1], torch.zeros(hw))[0]
        assert torch.equal(plain, p[0].argmax(0))
        _, _, s1 = flow.step(frames[1])
        again = flow(torch.from_numpy(frames[1]), *s1)[0]
    assert (again == plain).float().mean() >= 0.999


def test_memory_fusion_carries_the_eq3_fusion_of_the_plain_branch_and_the_moved_memory():
    """``fusion="memory"`` (addendum 9): the frame's labels are fused exactly as with ``flow`` from the same
    state; the next state is the log of the Eq. 3 fusion, on the grid, of this frame's plain probabilities
    with the previous memory; where ``has_prev`` is 0 (everywhere here) it is this frame's plain grid
    probabilities; a memory equal to them is a fixed point."""
    from ditta_ros.addon import normalised_reliability, softmax_entropy

    net = _net()
    hw = (100, 130)
    frames = _frames(3, *hw)
    flow, memory = StreamingDiTTA(net, hw, fusion="flow"), StreamingDiTTA(net, hw, fusion="memory")
    _, _, s0 = memory.step(frames[0])
    _, _, s0_flow = flow.step(frames[0])
    # the first frame: the memory is the plain branch (as log-probabilities)
    assert torch.allclose(s0[1].softmax(1), s0_flow[1].softmax(1), atol=1e-6)
    with torch.no_grad():
        out_m = memory(torch.from_numpy(frames[1]), *s0)
        out_f = flow(torch.from_numpy(frames[1]), *s0)
        assert torch.equal(out_m[0], out_f[0]) and torch.equal(out_m[1], out_f[1])
        plain_g = out_f[3]  # this frame's plain logits on the grid
        p, e = softmax_entropy(plain_g)
        # a previous memory unlike this frame: sure of class 0 on the right half, of class 1 on the left
        prev = torch.full_like(p, 0.02)
        gw = p.shape[3]
        prev[:, 0, :, gw // 2:], prev[:, 1, :, : gw // 2] = 0.9, 0.9
        prev = torch.log(prev / prev.sum(1, keepdim=True))
        pm, em = softmax_entropy(prev)
        ref, _ = fuse(p, pm, memory.tau, normalised_reliability(e), normalised_reliability(em))
        out = memory(torch.from_numpy(frames[1]), s0[0], prev, torch.ones(hw))[3]
        assert torch.allclose(out, torch.log(ref.clamp_min(1e-6)), atol=1e-5)
        assert not torch.allclose(out.softmax(1), p, atol=1e-2)  # the memory is not the plain branch
        half = torch.ones(hw)
        half[:, : hw[1] // 2] = 0  # no previous frame on the left half: the plain branch there
        mixed = memory(torch.from_numpy(frames[1]), s0[0], prev, half)[3].softmax(1)
        assert torch.allclose(mixed[..., : gw // 2 - 1], p[..., : gw // 2 - 1], atol=1e-5)
        assert torch.allclose(mixed[..., gw // 2 + 1:], ref[..., gw // 2 + 1:], atol=1e-5)
        fixed = memory(torch.from_numpy(frames[1]), s0[0], torch.log(p), torch.ones(hw))[3]
        assert torch.allclose(fixed.softmax(1), p, atol=1e-5)


def test_bayes_fusion_multiplies_the_evidence_of_the_plain_branch_and_the_moved_memory():
    """``fusion="bayes"`` (addenda 14, 15): below ``tau`` the next memory is the renormalised product of this frame's
    plain grid probabilities and the previous memory, and the labels the argmax of the plain probabilities times the
    moved memory; at or above ``tau`` (and where ``has_prev`` is 0) the plain ones stand; consistent weak evidence
    sharpens over frames (what the Eq. 3 average of ``memory`` cannot do); a certain contradiction falls back to
    the plain branch."""
    from ditta_ros.addon import normalised_reliability, softmax_entropy
    from ditta_ros.streaming import bayes_fuse, bayes_product

    p = torch.tensor([0.6, 0.4, 0.0]).view(1, 3, 1, 1)
    m = p.clone()
    for _ in range(3):
        m = bayes_product(p, m)
    assert float(m[0, 0]) > 0.83 and torch.allclose(m.sum(1), torch.ones(1, 1, 1))  # 0.6^4 / (0.6^4 + 0.4^4)
    sure = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    assert torch.equal(bayes_product(sure, torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1)), sure)
    two = torch.tensor([[0.6, 0.98], [0.39, 0.01], [0.01, 0.01]]).view(1, 3, 1, 2)  # uncertain, reliable pixel
    prior = torch.tensor([0.1, 0.9, 0.0]).view(1, 3, 1, 1).expand(1, 3, 1, 2)
    gated = bayes_fuse(two, prior, 0.8, normalised_reliability(softmax_entropy(torch.log(two))[1]))
    assert int(gated[0, :, 0, 0].argmax()) == 1 and torch.equal(gated[..., 1], two[..., 1])  # the reliable one stands
    assert torch.allclose(bayes_fuse(two, prior, 1.0, torch.ones(1, 1, 2)), bayes_product(two, prior))  # R 1: still

    net, hw, frames, (bayes, flow) = _two_fusions("bayes", "flow")
    _, _, s0 = bayes.step(frames[0])
    with torch.no_grad():
        plain_g = flow(torch.from_numpy(frames[1]), *flow.step(frames[0])[2])[3]
        p, _ = softmax_entropy(plain_g)
        prev = torch.full_like(p, 0.02)
        prev[:, 0] = 0.9
        prev = torch.log(prev / prev.sum(1, keepdim=True))
        out = bayes(torch.from_numpy(frames[1]), s0[0], prev, torch.ones(hw))
        ref = bayes_fuse(p, prev.softmax(1), bayes.tau, normalised_reliability(softmax_entropy(plain_g)[1]))
        assert torch.allclose(out[3], torch.log(ref.clamp_min(1e-6)), atol=1e-5)
        assert float((out[0] == 0).float().mean()) > float((flow(torch.from_numpy(frames[1]), s0[0], prev,
                                                                  torch.ones(hw))[0] == 0).float().mean())
        # the labels: the gated product at frame size of this frame's plain probabilities and the moved memory
        _, _, _, frame_logits = plain_step(bayes.iss, bayes.preprocess(torch.from_numpy(frames[1])), hw)
        pf, ef = softmax_entropy(frame_logits)
        pm = torch.nn.functional.interpolate(prev.softmax(1), size=hw, mode="bilinear", align_corners=False)
        rf = normalised_reliability(ef)
        for tau in (bayes.tau, float(rf.median())):  # the preset's; one that leaves half of the pixels to the frame
            model = StreamingDiTTA(net, hw, tau=tau, fusion="bayes")
            labels = model(torch.from_numpy(frames[1]), s0[0], prev, torch.ones(hw))[0]
            assert float((labels == bayes_fuse(pf, pm, tau, rf)[0].argmax(0)).float().mean()) >= 0.999
        assert float((labels == bayes_product(pf, pm)[0].argmax(0)).float().mean()) < 0.99  # the gate acted
        alone = bayes(torch.from_numpy(frames[1]), s0[0], prev, torch.zeros(hw))
        assert torch.allclose(alone[3].softmax(1), p, atol=1e-5)  # no previous frame: the plain branch


def test_export_rejects_an_opset_without_antialiased_resize(tmp_path):
    from ditta_ros.export import export_onnx

    net = _net()
    with pytest.raises(ValueError, match="opset >= 18"):
        export_onnx(net, (40, 56), str(tmp_path), "tiny", opset=17)


def test_export_cli_and_clean_process_inference(shared, tmp_path):
    import json
    import subprocess
    import sys

    from ditta_ros.tools.cli import main

    assert main(["export", "--model", "espnetv2-s1.0-cityscapes-512x256", "--height", "90", "--width", "120",
                 "--out", str(tmp_path)]) == 0
    meta_path = tmp_path / "ditta_espnetv2-s1.0-cityscapes-512x256_90x120.json"
    meta = json.loads(meta_path.read_text())
    assert meta["label_set"] == "cityscapes19" and meta["input_hw"] == [256, 512] and len(meta["sha256"]) == 64
    # a fresh interpreter with only onnxruntime, the ONNX and its metadata
    script = f"""
import json, numpy as np, onnxruntime as ort
meta = json.load(open({str(meta_path)!r}))
sess = ort.InferenceSession({str(meta_path).replace('.json', '.onnx')!r}, providers=["CPUExecutionProvider"])
feed = {{k: np.zeros(s, dtype=d) for k, (d, s) in meta["inputs"].items()}}
feed["image"] = np.random.default_rng(0).integers(0, 255, feed["image"].shape, dtype=np.uint8)
for _ in range(2):
    labels, conf, feat, logits = sess.run(None, feed)
    feed.update(feat_prev=feat, logits_prev=logits, has_prev=np.ones(meta["inputs"]["has_prev"][1], np.float32))
print(labels.shape, labels.dtype, float(conf.min()), float(conf.max()))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.startswith("(90, 120) int64")


def test_backend_selection_falls_back_and_backends_agree(tmp_path, caplog, monkeypatch):
    import logging

    from ditta_ros.export import export_onnx
    from ditta_ros.runtime import RuntimeOptions, select_backend
    from ditta_ros.runtime import openvino as ov_mod

    net = _net()
    path, _ = export_onnx(net, (40, 56), str(tmp_path), "tiny", "custom")
    model = StreamingDiTTA(net, (40, 56))
    with caplog.at_level(logging.INFO, logger="ditta.runtime"):
        ov_backend = select_backend(RuntimeOptions(backend="auto", openvino_precision="f32"), onnx_path=path,
                                    engine_dir=str(tmp_path / "engines"))
    assert "runtime backend: openvino" in caplog.text and "skipped tensorrt: " in caplog.text
    assert any((tmp_path / "engines" / "openvino").iterdir())  # the compiled-model cache
    one = select_backend(RuntimeOptions(backend="openvino", openvino_precision="f32", openvino_threads=1),
                         onnx_path=path)  # the node's openvino_threads reaches the compiled model
    assert int(one.compiled.get_property("INFERENCE_NUM_THREADS")) == 1
    with pytest.raises(RuntimeError, match="not present; available: CPU"):
        ov_mod.OpenVINOBackend(path, device="NPU")
    # without openvino the chain goes on to onnxruntime (and to torch on a CPU-only machine)
    monkeypatch.setitem(__import__("sys").modules, "openvino", None)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ditta.runtime"):
        ort_backend = select_backend(RuntimeOptions(backend="auto"), onnx_path=path,
                                     engine_dir=str(tmp_path / "engines"))
    assert "runtime backend: onnxruntime" in caplog.text and "openvino: the Python package" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ditta.runtime"):
        auto = select_backend(RuntimeOptions(backend="auto"), onnx_path=path, torch_model=model)
    assert type(auto).__name__ == "TorchBackend" and "CPU execution provider only" in caplog.text
    monkeypatch.undo()
    torch_backend = select_backend(RuntimeOptions(backend="torch"), torch_model=model)
    s1 = s2 = s3 = None
    for f in _frames(3):
        l1, c1, s1 = ort_backend.step(f, s1)
        l2, c2, s2 = torch_backend.step(f, s2)
        l3, c3, s3 = ov_backend.step(f, s3)
        assert (l1 == l2).mean() >= 0.999 and np.abs(c1 - c2).max() < 1e-4
        assert (l3 == l2).mean() >= 0.999 and np.abs(c3 - c2).max() < 1e-3
    with pytest.raises(RuntimeError, match="no usable runtime backend"):
        select_backend(RuntimeOptions(backend="onnxruntime"))
    for backend in (ort_backend, ov_backend):
        with pytest.raises(ValueError):
            backend.step(np.zeros((5, 5, 3), np.uint8))


@pytest.mark.parametrize("precision", ["f32", "auto"])
def test_pipelined_openvino_serves_the_labels_of_one_request_per_frame(tmp_path, precision):
    """The graph cut in two (stateless part on two streams, started a frame ahead; fusion in order) gives
    the labels and confidence of today's path (the whole graph, the plain graph on a stream's first frame)
    on a moving sequence with the flow branch; a frame finished after its request was reused is refused."""
    from ditta_ros.export import export_onnx
    from ditta_ros.gates import FlowWarp
    from ditta_ros.runtime.openvino import OpenVINOBackend, PipelinedOpenVINO
    from ditta_ros.runtime.serving import SkipAddon

    net, hw = _net(), (40, 56)
    split, _ = export_onnx(net, hw, str(tmp_path / "s"), "tiny", "custom", tau=0.8, fusion="flow", plain_logits=True)
    full, _ = export_onnx(net, hw, str(tmp_path / "f"), "tiny", "custom", tau=0.8, fusion="flow")
    plain, _ = export_onnx(net, hw, str(tmp_path / "p"), "tiny", "custom", tau=0.0)
    today = SkipAddon(OpenVINOBackend(full, precision=precision), OpenVINOBackend(plain, precision=precision))
    pipe = PipelinedOpenVINO(split, precision=precision)
    assert "2 streams, pipelined" in pipe.describe()
    frames = _frames(8)
    warp, state, ref = FlowWarp(), None, []
    for f in frames:
        labels, conf, state = today.step(f, warp(f, state))
        ref.append((labels, conf))
    warp, state, handles = FlowWarp(), None, [pipe.start(frames[0])]
    for t, f in enumerate(frames):
        if t + 1 < len(frames):
            handles.append(pipe.start(frames[t + 1]))  # the next frame's stateless part runs meanwhile
        labels, conf, state = pipe.finish(handles[t], warp(f, state))
        assert np.array_equal(labels, ref[t][0]) and np.array_equal(conf, ref[t][1]), t
    warp, state = FlowWarp(), None
    for t, f in enumerate(frames):  # frames served alone (the LATENCY compilation): the same again
        labels, conf, state = pipe.step(f, warp(f, state))
        assert np.array_equal(labels, ref[t][0]) and np.array_equal(conf, ref[t][1]), t
    assert float(state[2].max()) == 1.0  # later frames were fused (the state carried has_prev)
    stale = pipe.start(frames[0])
    pipe.start(frames[1]), pipe.start(frames[2])  # two streams: the first request is reused
    with pytest.raises(RuntimeError, match="finish in frame order"):
        pipe.finish(stale, None)
    with pytest.raises(ValueError, match="at least 2 streams"):
        PipelinedOpenVINO(split, streams=1)
    with pytest.raises(ValueError, match="without the plain_logits output"):
        PipelinedOpenVINO(full)
    with pytest.raises(ValueError, match="expected a uint8 frame"):
        pipe.start(np.zeros((5, 5, 3), np.uint8))


def test_auto_streams_follow_the_measured_rule(monkeypatch):
    """``openvino_streams: 0`` gives one request on every CPU and device measured: since the PReLU-slope fix the
    rule of ``bench/pipeline_speed.py`` passes nowhere (AVX2 kernels 1.26x with a core busy), and the node then
    builds the one-request backend."""
    from ditta_ros.runtime.openvino import auto_streams

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # an AVX2-only CPU, where the rule passed before the fix
    assert auto_streams() == 1
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert auto_streams() == 1


def test_frozen_model_takes_a_started_frame_and_ignores_a_stale_token(tmp_path):
    """``openvino_streams`` 2 gives the frozen model a pipelined backend; a frame started ahead and then
    stepped gives what stepping it alone gives; a token of a backend no longer serving is ignored."""
    from ditta_ros.presets import DittaConfig
    from ditta_ros.runtime import RuntimeOptions
    from ditta_ros.runtime.openvino import PipelinedOpenVINO
    from ditta_ros.runtime.serving import FrozenDiTTA

    opts = RuntimeOptions(backend="openvino", openvino_precision="f32", export_dir=str(tmp_path / "export"),
                          engine_cache=str(tmp_path / "engines"))
    cfg = DittaConfig.from_preset("select")
    one = FrozenDiTTA(_net(), cfg, opts.replace(openvino_streams=1))
    two = FrozenDiTTA(_net(), cfg, opts.replace(openvino_streams=2))
    frames = _frames(5)
    assert two.start(frames[0]) is None  # not prepared for the size yet
    one.prepare(frames[0].shape[:2]), two.prepare(frames[0].shape[:2])
    assert isinstance(two.backend, PipelinedOpenVINO) and one.start(frames[0]) is None
    assert any("_split_" in p.name for p in (tmp_path / "export").rglob("*.onnx"))
    two.warm(frames[0])  # its streams run once too, and leave no trace
    token = two.start(frames[0])
    for t, f in enumerate(frames):
        nxt = two.start(frames[t + 1]) if t + 1 < len(frames) else None
        a, b = one.step(f, 0.05 if t else None), two.step(f, 0.05 if t else None, started=token)
        assert np.array_equal(a.labels, b.labels) and np.array_equal(a.confidence, b.confidence)
        token = nxt
    assert two.stats.as_dict()["fused_share"] > 0
    old = two.start(frames[0])
    two.prepare(frames[0].shape[:2])  # a new backend (and a new stream): the old token is for another one
    one.reset()
    assert np.array_equal(two.step(frames[0], None, started=old).labels, one.step(frames[0], None).labels)


def test_openvino_auto_precision_under_an_isa_cap_runs_f32(tmp_path):
    """With oneDNN capped below its bf16 kernels (``ONEDNN_MAX_CPU_ISA=AVX2``: an AVX2-only CPU emulated),
    ``auto`` precision compiles in f32 and serves; OpenVINO's own choice would pick bf16 from the CPU's flags
    on a CPU with bf16 units and fail to compile. In a fresh interpreter: oneDNN reads the cap once."""
    import json
    import os
    import subprocess
    import sys

    from ditta_ros.export import export_onnx

    path, _ = export_onnx(_net(), (40, 56), str(tmp_path), "tiny", "custom")
    script = f"""
import json, numpy as np
from ditta_ros.runtime.openvino import OpenVINOBackend
b = OpenVINOBackend({path!r})
labels, conf, state = b.step(np.full((40, 56, 3), 90, np.uint8), None)
print(json.dumps({{"precision": b.precision, "shape": list(labels.shape)}}))
"""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res == {"precision": "float32", "shape": [40, 56]}


def test_openvino_matches_torch_on_the_default_model_over_a_sequence(shared, tmp_path):
    """Parity of the serving path on the real default model, 480x360 frames of a real
    clip, state carried: labels >= 99.5 % equal; plain logits (the state) within 1 % of
    their range at worst and 0.05 % on average (the in-graph antialiased resize rounds
    an input pixel one grey level apart now and then); confidence within 0.05."""
    import pathlib

    import cv2

    from ditta_ros.iss import load_model
    from ditta_ros.runtime import RuntimeOptions, streaming_backend

    iss, _ = load_model("espnetv2-s2.0-cityscapes-1024x512")
    net = DiTTANet(iss).eval()
    hw = (360, 480)
    frames = [np.ascontiguousarray(cv2.resize(cv2.imread(str(p))[:, :, ::-1], (hw[1], hw[0]),
                                              interpolation=cv2.INTER_AREA))
              for p in sorted(pathlib.Path(shared, "data", "camvid_0016E5_15hz", "frames").glob("*.png"))[:4]]
    ov_auto = RuntimeOptions(backend="openvino", export_dir=str(tmp_path), engine_cache=str(tmp_path / "engines"))
    ov = streaming_backend(net, hw, 0.8, ov_auto.replace(openvino_precision="f32"), name="default")
    fast = streaming_backend(net, hw, 0.8, ov_auto, name="default")  # auto precision
    assert ov.describe().startswith("openvino CPU float32")
    ref = streaming_backend(net, hw, 0.8, RuntimeOptions(backend="torch"))
    s_ov = s_t = s_fast = None
    for f in frames:
        l_ov, c_ov, s_ov = ov.step(f, s_ov)
        l_t, c_t, s_t = ref.step(f, s_t)
        l_fast, _, s_fast = fast.step(f, s_fast)
        # the default precision (bf16 on CPUs that have it): 99.1-99.9 % of torch's labels measured
        assert (l_fast == l_t).mean() >= 0.99
        logits_t = s_t[1].numpy()
        diff = np.abs(s_ov[1] - logits_t)
        assert diff.max() <= 1e-2 * np.ptp(logits_t) and diff.mean() <= 5e-4 * np.ptp(logits_t)
        assert np.abs(c_ov - c_t).max() <= 0.05
        assert (l_ov == l_t).mean() >= 0.995
    # the export (the full graph and the plain one for frames without a usable previous
    # frame) is cached per model, frame size and weights: a second backend reuses it
    files = sorted(p.name for p in tmp_path.rglob("*.onnx"))
    streaming_backend(net, hw, 0.8, ov_auto, name="default")
    assert sorted(p.name for p in tmp_path.rglob("*.onnx")) == files and len(files) == 2
    assert sum("_tau0_" in f for f in files) == 1


def test_tensorrt_engine_cache_key_and_clear_error_without_tensorrt(tmp_path):
    from ditta_ros.runtime import tensorrt as trt_backend

    base = trt_backend.engine_cache_key("a" * 64, "10.3.0", "NVIDIA H100", True)
    changed = [trt_backend.engine_cache_key("b" * 64, "10.3.0", "NVIDIA H100", True),
               trt_backend.engine_cache_key("a" * 64, "10.4.0", "NVIDIA H100", True),
               trt_backend.engine_cache_key("a" * 64, "10.3.0", "Orin", True),
               trt_backend.engine_cache_key("a" * 64, "10.3.0", "NVIDIA H100", False)]
    assert len(base) == 16 and base not in changed and len(set(changed)) == 4
    assert base == trt_backend.engine_cache_key("a" * 64, "10.3.0", "NVIDIA H100", True)
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="'tensorrt' is not installed"):
            trt_backend.TensorRTBackend(str(tmp_path / "x.onnx"))


def test_export_leaves_the_callers_network_untouched(tmp_path):
    from ditta_ros.export import export_onnx

    net = _net().to(memory_format=torch.channels_last)
    w = next(p for p in net.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] > 1)
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    export_onnx(net, (40, 56), str(tmp_path), "tiny")
    assert w.is_contiguous(memory_format=torch.channels_last) and not net.training


def test_motion_gate_masks_pixels_that_moved_beyond_the_window(tmp_path):
    """A textured frame shifted by 3 px fuses everywhere (reach 10 px); shifted by 40 px
    (beyond the reach, and beyond what the fast flow finds) it fuses almost nowhere; a
    gated state uses the plain branch there."""
    import cv2

    from ditta_ros.gates import MotionGate, gate_state

    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur((rng.random((400, 600)) * 255).astype(np.float32), (0, 0), 6)
    base = cv2.equalizeHist(cv2.normalize(base, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8))  # photo-like contrast

    def frame(dx):
        return np.repeat(base[50:290, 53 + dx:373 + dx, None], 3, 2).copy()

    gate = MotionGate((10.0, 10.0))
    assert gate(frame(0)).max() == 0  # first frame: nothing to fuse with
    assert gate(frame(3))[20:-20, 20:-20].mean() > 0.95
    assert gate(frame(23)).mean() < 0.1  # 20 px: found by the flow, beyond the reach
    assert gate(frame(63)).mean() < 0.2 and gate.last_share < 0.2  # 40 px: the flow fails, the residual tells
    gate.reset()
    assert gate(frame(0)).max() == 0

    net = _net()
    model = StreamingDiTTA(net, (40, 56), tau=1.0)
    ry, rx = model.window_reach()
    assert ry > 0 and rx > 0
    f0, f1 = _frames(2, 40, 56)
    _, _, state = model.step(f0)
    first, _, _ = model.step(f1)
    other = int(first.flatten()[0]) ^ 1  # a previous frame that said another class everywhere, confidently
    logits = torch.full_like(state[1], -20.0)
    logits[:, other] = 20.0
    logits[..., :2, :2] = 0.0  # one uncertain corner: Eq. 2 normalises by the frame's largest entropy
    state = (state[0], logits, state[2])
    fused, _, _ = model.step(f1, state)
    plain, _, _ = model.step(f1, gate_state(state, np.zeros((40, 56), np.float32)))
    assert torch.equal(plain, first) and (fused == other).float().mean() > 0.5  # gated = the plain branch


def test_max_gap_serves_the_plain_branch_when_frames_are_far_apart(monkeypatch):
    """With ``max_gap`` the streaming model gets ``has_prev = 0`` (plain branch) for
    frames further apart than that; at video rate, or with an unknown interval, 1."""
    from ditta_ros.ditta import DiTTAMethod
    from ditta_ros.inference import ISSRunner
    from ditta_ros.presets import DittaConfig

    net = _net()
    frames = _frames(3, 40, 56)
    seen = []
    original = StreamingDiTTA.step

    def spy(self, frame, state=None):
        seen.append(None if state is None else float(state[2].mean()))
        return original(self, frame, state)

    monkeypatch.setattr(StreamingDiTTA, "step", spy)

    def run(interval, max_gap):
        seen.clear()
        m = DiTTAMethod(ISSRunner(net.iss), None, DittaConfig.from_preset("faithful", tau=1.0, max_gap=max_gap),
                        progress=False)
        m.net, m.frame_interval = net, interval
        m.start_stream()
        for f in frames:
            m.predict(f)
        stats.update(m.stream_stats())
        return list(seen)

    stats = {}
    assert run(1.0, 0.2) == [None, 0.0, 0.0]  # 1 s apart: the add-on is not fused
    assert stats == {"streamed_frames": 3, "fused_share": 0.0, "frame_gap_s": 1.0}  # the fused-share counter
    assert run(1 / 15, 0.2) == [None, 1.0, 1.0]  # video rate
    assert stats["fused_share"] == pytest.approx(2 / 3, abs=1e-4) and stats["frame_gap_s"] == pytest.approx(1 / 15, abs=1e-4)
    assert run(None, 0.2) == [None, 1.0, 1.0]  # unknown interval
    assert stats["frame_gap_s"] is None
    assert run(1.0, 0.0) == [None, 1.0, 1.0]  # no limit


def test_stamps_going_back_start_a_new_stream_at_any_max_gap():
    """A negative frame interval (a replay looped or restarted) is never fused with the frame before it."""
    from ditta_ros.gates import apply_gates

    model = StreamingDiTTA(_net(), (40, 56))
    frame = _frames(1, 40, 56)[0]
    state = model.initial_state()
    state = (state[0], state[1], torch.ones_like(state[2]))  # every pixel may use the previous frame
    for max_gap in (0.2, 0.0):
        assert float(apply_gates(state, frame, None, 1 / 15, max_gap)[2].min()) == 1.0
        assert float(apply_gates(state, frame, None, None, max_gap)[2].min()) == 1.0
        assert float(apply_gates(state, frame, None, -0.5, max_gap)[2].max()) == 0.0
    assert float(apply_gates(state, frame, None, 1.0, 0.2)[2].max()) == 0.0
    assert float(apply_gates(state, frame, None, 1.0, 0.0)[2].min()) == 1.0


def test_skip_addon_runs_the_plain_graph_only_when_no_pixel_may_fuse():
    from ditta_ros.runtime import SkipAddon

    class Fake:
        frame_hw = (4, 6)

        def __init__(self, name):
            self.name, self.calls = name, []

        def describe(self):
            return self.name

        def initial_state(self):
            return (np.zeros(1), np.zeros(1), np.zeros(self.frame_hw, np.float32))

        def step(self, frame, state=None):
            if frame.shape != (4, 6, 3):
                raise ValueError("size")
            self.calls.append(state)
            return np.zeros((4, 6)), np.ones((4, 6)), (np.zeros(1), np.zeros(1), np.ones((4, 6), np.float32))

    full, plain = Fake("full"), Fake("plain")
    b = SkipAddon(full, plain)
    f = np.zeros((4, 6, 3), np.uint8)
    _, _, s = b.step(f)  # first frame: plain
    b.step(f, s)  # has_prev = 1: full
    gated = (s[0], s[1], np.zeros((4, 6), np.float32))
    b.step(f, gated)  # gated everywhere (max_gap): plain
    part = (s[0], s[1], np.eye(4, 6, dtype=np.float32))
    b.step(f, part)  # some pixels may fuse: full
    assert len(plain.calls) == 2 and len(full.calls) == 2 and b.describe() == "full"
    with pytest.raises(ValueError):
        b.step(np.zeros((2, 2, 3), np.uint8))


def test_flow_warp_moves_the_state_with_the_scene_and_gates_inconsistent_flow():
    """Zero flow leaves the state unchanged; a scene shifted by a whole grid cell moves the state by one
    cell; the first frame of a stream passes through; FrozenDiTTA with ``gap_factor`` fuses up to that
    multiple of the gap it was trained on."""
    import cv2

    from ditta_ros.gates import FlowWarp, warp_state

    state = (torch.randn(1, 130, 6, 8), np.random.rand(1, 5, 6, 8).astype(np.float32), np.ones((48, 64), np.float32))
    same = warp_state(state, np.zeros((6, 8, 2), np.float32))
    assert torch.equal(same[0], state[0]) and np.array_equal(same[1], state[1]) and same[2] is state[2]
    assert warp_state(None, np.zeros((6, 8, 2), np.float32)) is None

    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur((rng.random((200, 300)) * 255).astype(np.float32), (0, 0), 4)
    base = cv2.normalize(base, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)

    def frame(dx):
        return np.repeat(base[40:136, 40 + dx:168 + dx, None], 3, 2).copy()

    warp = FlowWarp()
    grid = (torch.arange(16 * 12, dtype=torch.float32).view(1, 1, 12, 16).repeat(1, 2, 1, 1),
            np.zeros((1, 1, 12, 16), np.float32), torch.ones(96, 128))
    assert warp(frame(0), grid) is grid  # the first frame: nothing to warp against
    moved = warp(frame(8), grid)  # the scene moved 8 px left = one cell of a 12 x 16 grid on 96 x 128
    inner = moved[0][0, 0, 3:-3, 3:-3] - grid[0][0, 0, 3:-3, 3:-3]
    assert torch.allclose(inner, torch.ones_like(inner), atol=0.25) and warp.last_share > 0.8

    from ditta_ros.presets import DittaConfig
    from ditta_ros.runtime import FrozenDiTTA

    net = _net()
    frozen = FrozenDiTTA(net, DittaConfig.from_preset("default", gap_factor=1.5), trained_gap=0.2)
    assert frozen.max_gap == pytest.approx(0.3)
    assert FrozenDiTTA(net, DittaConfig.from_preset("default")).max_gap == 0.2


def test_flow_warp_residual_gates_where_the_moved_frame_does_not_explain_the_image():
    """``warp_residual`` (addendum 12): a shifted scene the flow explains keeps its pixels free to fuse; a patch
    that changes without moving (the flow cannot explain it) is gated there and nowhere far from it; without the
    option the same patch passes the forward-backward check; FrozenDiTTA builds its warp with the option."""
    import cv2

    from ditta_ros.gates import FlowWarp

    rng = np.random.default_rng(1)
    base = cv2.GaussianBlur((rng.random((200, 300)) * 255).astype(np.float32), (0, 0), 4)
    base = cv2.normalize(base, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)

    def frame(dx, patch=False):
        f = np.repeat(base[40:136, 40 + dx:168 + dx, None], 3, 2).copy()
        if patch:  # a bright square appears: nothing in the previous frame moves there
            f[32:64, 48:80] = 255
        return f

    state = (torch.zeros(1, 2, 12, 16), np.zeros((1, 1, 12, 16), np.float32), torch.ones(96, 128))
    strict, loose = FlowWarp(max_residual=20), FlowWarp()
    for w in (strict, loose):
        w(frame(0), state)
    shifted = strict(frame(4), state)
    assert strict.last_share > 0.8 and float(shifted[2].mean()) > 0.8
    loose(frame(4), state)
    gated, loose_mask = strict(frame(8, patch=True), state)[2], loose(frame(8, patch=True), state)[2]
    assert float(gated[36:60, 52:76].mean()) < 0.2  # the new patch: gated
    assert float(gated[:, 100:].mean()) > 0.8  # far from it: free
    assert float(loose_mask[36:60, 52:76].mean()) > float(gated[36:60, 52:76].mean()) + 0.3

    from ditta_ros.presets import DittaConfig
    from ditta_ros.runtime import FrozenDiTTA

    frozen = FrozenDiTTA(_net(), DittaConfig.from_preset("select", warp_residual=20))
    frozen.prepare((96, 128))
    assert frozen._warp.max_residual == 20
    with pytest.raises(ValueError):
        DittaConfig.from_preset("select", warp_residual=-1)


@pytest.mark.parametrize("hw", [(96, 128), (20, 24)])
def test_flow_warp_on_one_grid_resizes_the_flow_by_area_as_it_always_did(hw):
    """With the state on one grid (``flow_grid="addon"``, every preset) the flow reaches the grid by OpenCV's area
    resize, whether the grid is smaller than the half-size frame (96 x 128) or larger in both directions (20 x 24):
    the warp of releases before ``flow_grid`` existed, to the bit."""
    import cv2

    from ditta_ros.gates import FlowWarp, consistent_flow, dis_flow, small_grey, warp_state

    rng = np.random.default_rng(2)
    base = cv2.GaussianBlur((rng.random((240, 320)) * 255).astype(np.float32), (0, 0), 3).astype(np.uint8)
    h, w = hw
    f0, f1 = (np.repeat(base[20:20 + h, 20 + dx:20 + dx + w, None], 3, 2).copy() for dx in (0, 2))
    state = (torch.randn(1, 3, 12, 16), torch.randn(1, 5, 12, 16), torch.ones(h, w))
    warp = FlowWarp()
    warp(f0, state)
    moved = warp(f1, state)
    g0, g1 = small_grey(f0, 0.5), small_grey(f1, 0.5)
    fw, _ = consistent_flow(dis_flow(), g1, g0, 1.0)
    grid = cv2.resize(fw, (16, 12), interpolation=cv2.INTER_AREA)
    grid[..., 0] *= 16 / g1.shape[1]
    grid[..., 1] *= 12 / g1.shape[0]
    ref = warp_state(state, grid)
    assert torch.equal(moved[0], ref[0]) and torch.equal(moved[1], ref[1])


def test_flow_grid_model_keeps_moves_and_fuses_the_state_on_the_model_grid():
    """``flow_grid="model"`` (addendum 16): the flow branch's state is the plain logits on the model's own grid
    (unpooled) instead of the add-on grid; the labels are Eq. 3 with that state resized to the frame; ``has_prev = 0``
    gives the plain branch, the same as with the add-on grid; the flow moves a state on two grids by the same image
    motion (one coarse cell = two fine cells); options that cannot hold are refused."""
    import cv2

    from ditta_ros.gates import FlowWarp, warp_state
    from ditta_ros.presets import DittaConfig

    net, hw = _net(), (100, 130)
    frames = _frames(2, *hw)
    fine, coarse = (StreamingDiTTA(net, hw, fusion="flow", flow_grid=g) for g in ("model", "addon"))
    assert fine.state_shapes["logits_prev"] == fine.plain_logits_shape
    assert fine.state_shapes["logits_prev"][2] == 2 * coarse.state_shapes["logits_prev"][2]
    assert fine.state_shapes["feat_prev"] == coarse.state_shapes["feat_prev"]
    _, _, state = fine.step(frames[0])
    assert tuple(state[1].shape) == fine.plain_logits_shape
    with torch.no_grad():
        labels = fine(torch.from_numpy(frames[1]), *state)[0]
        assert torch.equal(labels, _flow_eq3_reference(fine, frames[1], state)[1][0].argmax(0))
        off = torch.zeros(hw)
        _, _, cs = coarse.step(frames[0])
        assert torch.equal(fine(torch.from_numpy(frames[1]), state[0], state[1], off)[0],
                           coarse(torch.from_numpy(frames[1]), cs[0], cs[1], off)[0])

    two = (torch.randn(1, 3, 6, 8), np.random.rand(1, 5, 12, 16).astype(np.float32), np.ones((48, 64), np.float32))
    same = warp_state(two, np.zeros((12, 16, 2), np.float32))
    assert torch.equal(same[0], two[0]) and np.array_equal(same[1], two[1])
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur((rng.random((200, 300)) * 255).astype(np.float32), (0, 0), 4)
    base = cv2.normalize(base, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)

    def frame(dx):
        return np.repeat(base[40:136, 40 + dx:168 + dx, None], 3, 2).copy()

    # x in coarse cells on a 12 x 16 grid; in fine cells on a 24 x 32 grid (smaller than the 48 x 64 half-size frame:
    # the flow area-averaged to it) and on a 60 x 80 grid (larger: bilinear, as ESPNetv2's 512 x 256 at CamVid's size)
    for fh, fw_, step, tol in ((24, 32, 2.0, 0.5), (60, 80, 5.0, 1.25)):
        state = (torch.arange(16, dtype=torch.float32).view(1, 1, 1, 16).repeat(1, 1, 12, 1),
                 torch.arange(fw_, dtype=torch.float32).view(1, 1, 1, fw_).repeat(1, 1, fh, 1), torch.ones(96, 128))
        warp = FlowWarp()
        warp(frame(0), state)
        moved = warp(frame(8), state)  # 8 px left: one coarse cell, 8 x fw_ / 128 fine cells
        coarse_step = moved[0][0, 0, 3:-3, 3:-3] - state[0][0, 0, 3:-3, 3:-3]
        m = fh // 4
        fine_step = moved[1][0, 0, m:-m, m:-m] - state[1][0, 0, m:-m, m:-m]
        assert torch.allclose(coarse_step, torch.full_like(coarse_step, 1.0), atol=0.25)
        assert torch.allclose(fine_step, torch.full_like(fine_step, step), atol=tol), (fh, fw_)

    assert DittaConfig.from_preset("select", flow_grid="model").flow_grid == "model"
    assert DittaConfig.from_preset("select", flow_grid="model").hyper()["flow_grid"] == "model"
    assert "flow_grid" not in DittaConfig.from_preset("select").hyper()  # stored runs stay comparable
    for bad in ({"flow_grid": "pixels"}, {"flow_grid": "model", "fusion": "grid"}):
        with pytest.raises(ValueError, match="flow_grid"):
            DittaConfig.from_preset("select", **bad)
    with pytest.raises(ValueError, match="flow_grid"):
        StreamingDiTTA(net, hw, fusion="frame", flow_grid="model")


@pytest.mark.parametrize("backend,fusion,flow_grid", [
    ("onnxruntime", "flow", "addon"), ("openvino", "flow", "addon"), ("openvino", "memory", "addon"),
    ("openvino", "bayes", "addon"), ("onnxruntime", "flow", "model"), ("openvino", "bayes", "model")])
def test_flow_branch_serves_alike_on_torch_and_the_exported_graph(tmp_path, backend, fusion, flow_grid):
    """``fusion="flow"`` (and ``memory``, ``bayes``; the state on either grid) through :class:`FrozenDiTTA`: the
    exported graph has no ``feat_prev`` input (the exporter drops what the branch does not use), the state is still
    warped, and the labels of a moving sequence match the torch path's."""
    from ditta_ros.presets import DittaConfig
    from ditta_ros.runtime import FrozenDiTTA, RuntimeOptions

    pytest.importorskip(backend)
    net, cfg = _net(), DittaConfig.from_preset("default", fusion=fusion, flow_grid=flow_grid)
    served = FrozenDiTTA(net, cfg, RuntimeOptions(backend=backend, export_dir=str(tmp_path)))
    ref = FrozenDiTTA(net, cfg, RuntimeOptions(backend="torch"))
    for f in _frames(4, 100, 130):
        a, b = served.step(f, 0.1), ref.step(f, 0.1)
        assert (a.labels == b.labels).mean() >= 0.999
    if backend == "onnxruntime":  # the graph takes the moved logits, not the features
        import onnxruntime as ort

        onnx = next(tmp_path.rglob("*_flow_*.onnx"))
        assert {i.name for i in ort.InferenceSession(str(onnx)).get_inputs()} == {"image", "logits_prev", "has_prev"}
    assert served.stats.fused == ref.stats.fused == 3 and served._warp is not None
    assert backend in served.describe()


def test_a_warmed_model_serves_what_a_model_that_never_ran_serves():
    """``FrozenDiTTA.warm``: its inferences leave no trace: no state (the next frame is not fused), no stream
    statistics, and a moving sequence gets the labels of a freshly prepared model."""
    from ditta_ros.presets import DittaConfig
    from ditta_ros.runtime import FrozenDiTTA

    net, cfg = _net(), DittaConfig.from_preset("default", fusion="flow")
    frames = _frames(4, 100, 130)
    warmed, fresh = FrozenDiTTA(net, cfg), FrozenDiTTA(net, cfg)
    warmed.prepare(frames[0].shape[:2])
    warmed.warm(frames[3][::-1].copy())  # another frame: a kept state would change the fused labels
    assert warmed._state is None and warmed.stats.frames == 0
    for f in frames:
        assert np.array_equal(warmed.step(f, 0.1).labels, fresh.step(f, 0.1).labels)
    assert warmed.stats.fused == fresh.stats.fused == 3


@pytest.mark.parametrize("flow_grid", ["addon", "model"])
def test_the_graph_split_for_parallel_streams_computes_what_the_whole_graph_does(tmp_path, flow_grid):
    """:func:`~ditta_ros.runtime.openvino.split_graph` (``bench/streams_probe.py``,
    :class:`~ditta_ros.runtime.openvino.PipelinedOpenVINO`) cuts the served flow graph where the ISS logits
    leave the classifier: the stateless part on two OpenVINO streams and the fusion part in frame order give
    the whole graph's labels on every frame of a moving sequence (f32), and the stateless part takes the image
    alone."""
    import json
    import os
    import sys

    import openvino as ov

    from ditta_ros.export import export_onnx

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
    from streams_probe import run_flow_single, run_flow_split

    from ditta_ros.runtime.openvino import split_graph

    hw = (100, 130)
    net = _net()
    path, meta = export_onnx(net, hw, str(tmp_path), "tiny", fusion="flow", plain_logits=True, flow_grid=flow_grid)
    meta = json.load(open(meta))
    assert "plain_logits" in meta["extra_outputs"] and meta["flow_grid"] == flow_grid
    assert (meta["inputs"]["logits_prev"][1] == meta["extra_outputs"]["plain_logits"][1]) == (flow_grid == "model")
    core, f32 = ov.Core(), {"INFERENCE_PRECISION_HINT": "f32"}
    stateless, fusion = split_graph(core.read_model(path))
    assert [p.get_friendly_name() for p in stateless.get_parameters()] == ["image"]
    whole = core.compile_model(path, "CPU", {"PERFORMANCE_HINT": "LATENCY", **f32})
    parts = (core.compile_model(stateless, "CPU", {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": "2", **f32}),
             core.compile_model(fusion, "CPU", {"PERFORMANCE_HINT": "LATENCY", **f32}))
    frames = _frames(6, *hw)
    a, b = run_flow_single(whole, frames, hw), run_flow_split(*parts, frames, hw)
    assert len(a) == len(b) == 6 and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_openvino_reads_prelu_slopes_at_the_input_rank_and_serves_the_same_labels(tmp_path, monkeypatch):
    """:func:`~ditta_ros.runtime.openvino.read_graph` (what every OpenVINO backend compiles) gives each PReLU slope
    that ``torch.onnx`` writes as ``[C, 1, 1]`` the rank of its input, ``[1, C, 1, 1]`` (OpenVINO's CPU plugin then
    keeps the fused BatchNorm + PReLU kernels channels-last: ``bench/prelu_slopes.py``). The same operations, run in
    another memory layout: in f32 the labels are identical and the confidence within float rounding (kernels may
    sum in another order); in the CPU's own precision (bf16 where it has the units) labels agree on >= 99.9 % of
    the pixels; a previous state is fed; a graph already read is left alone; both OpenVINO backends compile the graph
    :func:`read_graph` gives."""
    import openvino as ov

    from ditta_ros.export import export_onnx
    from ditta_ros.runtime.openvino import channel_slopes, read_graph

    def slope_ranks(m):
        return [op.input_value(1).get_partial_shape().rank.get_length() for op in m.get_ordered_ops()
                if op.get_type_name() == "PRelu"]

    hw = (100, 130)
    path, _ = export_onnx(_net(), hw, str(tmp_path), "tiny", fusion="flow")
    core = ov.Core()
    raw, fixed = core.read_model(path), read_graph(core, path)
    assert slope_ranks(raw) and set(slope_ranks(raw)) == {3}
    assert len(slope_ranks(fixed)) == len(slope_ranks(raw)) and set(slope_ranks(fixed)) == {4}
    assert channel_slopes(fixed) == 0
    rng = np.random.default_rng(0)
    frames = _frames(3, *hw)
    for hint in ({"INFERENCE_PRECISION_HINT": "f32"}, {}):
        a, b = (core.compile_model(m, "CPU", {"PERFORMANCE_HINT": "LATENCY", **hint}) for m in (raw, fixed))
        for frame in frames:
            feed = {i.get_any_name(): frame if i.get_any_name() == "image" else
                    rng.random([d.get_length() for d in i.get_partial_shape()]).astype(np.float32) for i in a.inputs}
            out_a, out_b = a.create_infer_request().infer(feed), b.create_infer_request().infer(feed)
            labels = out_a[a.output("labels")], out_b[b.output("labels")]
            confidence = out_a[a.output("confidence")], out_b[b.output("confidence")]
            if hint:
                assert np.array_equal(*labels)
                np.testing.assert_allclose(*confidence, rtol=1e-5, atol=1e-6)
            else:
                assert float(np.mean(labels[0] == labels[1])) >= 0.999
                np.testing.assert_allclose(*confidence, atol=2e-3)
    from ditta_ros.runtime import openvino as backends

    fixed_graphs, real = [], backends.channel_slopes
    monkeypatch.setattr(backends, "channel_slopes", lambda m: fixed_graphs.append(real(m)) or fixed_graphs[-1])
    backends.OpenVINOBackend(path, precision="f32")
    split_path, _ = export_onnx(_net(), hw, str(tmp_path / "split"), "tiny", fusion="flow", plain_logits=True)
    backends.PipelinedOpenVINO(split_path, precision="f32")
    assert len(fixed_graphs) == 2 and all(n == len(slope_ranks(raw)) for n in fixed_graphs)


def test_frames_exactly_max_gap_apart_fuse_whatever_the_float_rounding_of_their_stamps():
    """Header stamps read as float seconds at today's epoch round by ~0.2 us: a 25 Hz camera's frames 0.2 s apart
    measure 0.20000005 s or 0.1999998 s; both fuse at ``max_gap`` 0.2, a frame 0.21 s apart does not."""
    from ditta_ros.gates import STAMP_SLACK, apply_gates

    model = StreamingDiTTA(_net(), (40, 56))
    frame = _frames(1, 40, 56)[0]
    state = model.initial_state()
    state = (state[0], state[1], torch.ones_like(state[2]))
    stamp = lambda sec, ns: sec + ns * 1e-9  # as imgmsg reads a header stamp
    over = stamp(1700000002, 0) - stamp(1700000001, 800000000)
    under = stamp(1700000001, 600000000) - stamp(1700000001, 400000000)
    assert over > 0.2 > under and over - 0.2 < STAMP_SLACK
    for interval in (over, under):
        assert float(apply_gates(state, frame, None, interval, 0.2)[2].min()) == 1.0
    assert float(apply_gates(state, frame, None, 0.21, 0.2)[2].max()) == 0.0
    from ditta_ros.live.adaptation import futile
    from ditta_ros.presets import DittaConfig

    default = DittaConfig.from_preset("default")  # only the add-on adapts: pointless beyond max_gap
    assert futile(default, over) is None and futile(default, 0.21) is not None


def test_flow_transfer_moves_a_label_with_the_scene_and_leaves_it_unmoved_without_a_flow():
    """``bench/flow_transfer.py`` (addendum 17): the previous ground truth moved by either flow lands where the scene
    went (a textured scene shifted 6 px left carries a label stripe 6 px left), and ``none`` leaves it unmoved."""
    import os
    import sys

    import cv2

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
    from flow_transfer import FLOWS, moved_labels

    rng = np.random.default_rng(3)
    base = cv2.GaussianBlur((rng.random((200, 300)) * 255).astype(np.float32), (0, 0), 3).astype(np.uint8)
    prev, cur = (np.repeat(base[40:136, 40 + dx:168 + dx, None], 3, 2).copy() for dx in (0, 6))
    label = np.zeros((96, 128), np.uint8)
    label[:, 60:70] = 1  # a stripe in the previous frame; in the current one it is at 54:64
    oks = {}
    for name in ("served", "served+mb", "fine"):
        spec = FLOWS[name]
        dis = cv2.DISOpticalFlow_create(getattr(cv2, f"DISOPTICAL_FLOW_PRESET_{spec[1]}"))
        moved, ok, seconds, off = moved_labels(label, cur, prev, spec, dis)
        inner = oks[name] = ok[20:-20]
        assert off.shape == ok.shape and (off.all() or name == "served+mb"), name
        assert inner.mean() > 0.8 and seconds > 0, name
        assert (moved[20:-20, 56:62] == 1)[inner[:, 56:62]].mean() > 0.9, name
        assert (moved[20:-20, 66:70] == 0)[inner[:, 66:70]].mean() > 0.9, name
    # a uniform shift has no motion boundary: the check keeps (nearly) every pixel the forward-backward check keeps
    assert not (oks["served+mb"] & ~oks["served"]).any() and (oks["served+mb"] == oks["served"]).mean() > 0.98
    unmoved, ok, seconds, off = moved_labels(label, cur, prev, None, None)
    assert np.array_equal(unmoved, label) and ok.all() and off.all() and seconds == 0.0


def test_motion_boundary_check_rejects_a_flow_step_and_keeps_uniform_motion():
    """Sundaram et al.'s motion-boundary check (addendum 18): zero and uniform flow pass everywhere; a step between
    two motions (in u across columns, in v across rows) fails on the two cells beside the step and nowhere else;
    ``|w|`` counts in frame pixels (``flow / scale``, squared), so the same ramp on a quarter-size grid passes from
    its third column on; a flow not ``[h, w, 2]`` and a scale not > 0 raise."""
    from ditta_ros.gates import off_motion_boundary

    flat = np.zeros((20, 30, 2), np.float32)
    assert off_motion_boundary(flat).all()
    flat[..., 0] = 7.0
    assert off_motion_boundary(flat, 0.5).all()
    step = np.zeros((20, 30, 2), np.float32)
    step[:, 15:, 0] = 3.0  # the right half moves 3 px, the left half stands still
    ok = off_motion_boundary(step)
    assert not ok[:, 14:16].any() and ok[:, :14].all() and ok[:, 16:].all()
    step = np.zeros((20, 30, 2), np.float32)
    step[10:, :, 1] = 2.0  # the lower half moves 2 px down
    ok = off_motion_boundary(step)
    assert not ok[9:11].any() and ok[:9].all() and ok[11:].all()
    ramp = np.zeros((20, 30, 2), np.float32)
    ramp[..., 0] = 10.0 + 0.3 * np.arange(30, dtype=np.float32)  # |grad u|^2 = 0.09; 0.01 |w|^2 >= 1 in frame px
    assert off_motion_boundary(ramp).all()
    ramp[..., 0] = 0.3 * np.arange(30, dtype=np.float32)  # near zero motion the same gradient is a boundary
    assert not off_motion_boundary(ramp)[:, :5].any()
    quarter = off_motion_boundary(ramp, 0.25)  # |w| = 1.2 x in frame px: passes where 0.0144 x^2 + 0.002 >= 0.09
    assert not quarter[:, :3].any() and quarter[:, 3:].all()
    for bad in (np.zeros((20, 30), np.float32), np.zeros((20, 30, 3), np.float32)):
        with pytest.raises(ValueError):
            off_motion_boundary(bad)
    for scale in (0.0, float("nan")):
        with pytest.raises(ValueError):
            off_motion_boundary(flat, scale)
