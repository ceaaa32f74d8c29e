"""ESPNetv2: strict loading of the released weights and the upstream golden outputs."""

import os

import numpy as np
import pytest
import torch

from conftest import CAMVID, ESPNET_DIR
from ditta_ros.inference import ISSRunner
from ditta_ros.iss import load_model
from ditta_ros.iss.espnetv2 import ESPNetv2Seg, load_espnetv2

WEIGHTS = [("espnetv2_s_2.0_city_1024x512", 2.0, (1024, 512)),
           ("espnetv2_s_2.0_city_512x256", 2.0, (512, 256)),
           ("espnetv2_s_1.0_city_512x256", 1.0, (512, 256))]


@pytest.fixture(scope="module")
def golden(shared):
    return np.load(os.path.join(ESPNET_DIR, "golden_camvid_0016E5_frame0.npz"))


@pytest.mark.parametrize("name,s,size", WEIGHTS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_golden_logits_and_argmax(golden, name, s, size, channels_last):
    model = load_espnetv2(os.path.join(ESPNET_DIR, name + ".pth"), s, size)
    runner = ISSRunner(model, channels_last=channels_last)
    x = torch.from_numpy(golden[name + "__input"])
    if runner.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        feats, logits = runner.model(x)
        up = model.upsample_logits(logits, x.shape[2:])
    assert feats.shape == (1, 32, size[1] // 2, size[0] // 2)
    diff = np.abs(up[0, :, ::8, ::8].numpy() - golden[name + "__logits_every8"]).max()
    assert diff <= 1e-4, diff
    assert np.array_equal(up[0].argmax(0).numpy().astype(np.uint8), golden[name + "__argmax"])


@pytest.mark.parametrize("name,s,size", WEIGHTS[:1])
def test_preprocessing_reproduces_reference_input(golden, name, s, size):
    import cv2

    model = load_espnetv2(os.path.join(ESPNET_DIR, name + ".pth"), s, size)
    frame = cv2.imread(os.path.join(CAMVID, "frames", "000000.png"))[:, :, ::-1].copy()
    x = model.preprocess(frame)
    assert x.shape == golden[name + "__input"].shape
    assert np.abs(x.numpy() - golden[name + "__input"]).max() < 1e-5


def test_strict_loading_rejects_wrong_architecture(shared, tmp_path):
    with pytest.raises(RuntimeError, match="does not match ESPNetv2 s=2.0"):
        load_espnetv2(os.path.join(ESPNET_DIR, "espnetv2_s_1.0_city_512x256.pth"), 2.0, (512, 256))
    with pytest.raises(FileNotFoundError):
        load_espnetv2(str(tmp_path / "missing.pth"), 2.0, (512, 256))


def test_registry_name_loads_and_param_groups_split(shared):
    model, info = load_model("espnetv2-s1.0-cityscapes-512x256")
    assert info.label_set == "cityscapes19" and info.family == "espnetv2"
    groups = model.param_groups()
    backbone = {id(p) for p in groups["backbone"]}
    decoder = {id(p) for p in groups["decoder"]}
    head = {id(p) for p in groups["cls_head"]}
    assert backbone and decoder and not backbone & decoder
    assert head < decoder
    assert backbone | decoder == {id(p) for p in model.parameters()}


def test_odd_input_size_is_a_clear_error():
    model = ESPNetv2Seg(s=0.5, num_classes=4).eval()
    with pytest.raises(ValueError, match="multiples of 16"):
        model(torch.zeros(1, 3, 40, 50))


@pytest.mark.parametrize("hw,out", [((512, 1024), (256, 512)), ((384, 768), (256, 512)), ((256, 512), (26, 52)),
                                    ((17, 23), (5, 7)), ((15, 9), (10, 6))])
def test_export_form_of_adaptive_pooling_equals_torch(hw, out):
    """The exported pyramid pooling (strided / stride-1 + gather average pools where the bins
    are uniform, matrices elsewhere) gives torch's adaptive-pooling bins, and exports to ONNX."""
    import onnxruntime as ort
    from torch import nn

    from ditta_ros.iss.espnetv2 import adaptive_avg_pool2d

    class Pool(nn.Module):
        def forward(self, x):
            return adaptive_avg_pool2d(x, out)

    x = torch.randn(1, 3, *hw, generator=torch.Generator().manual_seed(0))
    ref = torch.nn.functional.adaptive_avg_pool2d(x, out)
    with torch.no_grad():
        traced = torch.jit.trace(Pool(), x)(x)  # the export path (tracing)
    assert torch.allclose(traced, ref, atol=1e-6)
    import io

    buf = io.BytesIO()
    torch.onnx.export(Pool(), (x,), buf, opset_version=18, dynamo=False)
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    assert np.abs(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0] - ref.numpy()).max() < 1e-5
