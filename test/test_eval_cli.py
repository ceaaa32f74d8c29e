"""`ditta eval` end to end on the real CamVid clip (short), and its error paths."""

import csv
import json
import os

import numpy as np
import pytest

from conftest import CAMVID
from ditta_ros.tools.cli import main
from ditta_ros.tools.evaluate import LabelSetMismatch, bridge_label_sets
from ditta_ros.data import open_clip
from ditta_ros.labels import load_label_map
from ditta_ros.protocol import w2f_split, warmup_length


def test_w2f_split_matches_official_rule():
    assert warmup_length(101, 10) == 10 and warmup_length(5, 10) == 1 and warmup_length(9, 100) == 9
    s = w2f_split(101, 10)
    assert list(s.warmup) == list(range(10)) and list(s.evaluate) == list(range(10, 101))
    full = w2f_split(7, 100)
    assert list(full.warmup) == list(full.evaluate) == list(range(7))
    with pytest.raises(ValueError):
        warmup_length(10, 0)
    with pytest.raises(ValueError, match="nothing to evaluate"):
        w2f_split(1, 50)


def test_eval_iss_on_real_clip(shared, tmp_path):
    out = tmp_path / "out"
    rc = main(["eval", CAMVID, "--model", "espnetv2-s1.0-cityscapes-512x256", "--label-map",
               "cityscapes19_to_camvid11", "--method", "iss", "--max-frames", "20", "--warmup-ratio", "10",
               "--no-progress", "--overlays", "2", "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "result.json").read_text())
    for k in ("method", "model", "clip", "frames", "warmup_frames", "eval_frames", "mIoU", "wIoU", "mVC8",
              "mVC16", "fps", "device", "per_class_iou"):
        assert k in res, k
    assert res["frames"] == 20 and res["warmup_frames"] == 2 and res["eval_frames"] == 18
    assert 30 < res["mIoU"] < 90 and 50 < res["wIoU"] < 100 and 50 < res["mVC8"] <= 100
    assert res["fps"] > 0 and res["device"] == "cpu" and set(res["per_class_iou"]) >= {"road", "car", "sky"}
    rows = list(csv.DictReader(open(out / "per_frame.csv")))
    assert [int(r["frame"]) for r in rows] == list(range(2, 20))
    assert os.path.getsize(out / "per_frame_miou.png") > 1000
    assert len(os.listdir(out / "overlays")) == 2
    # the road, by far the largest class here, must be segmented well by a Cityscapes model
    assert res["per_class_iou"]["road"] > 80


def test_eval_errors_are_clear(shared, tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope"), "--model", "espnetv2-s1.0-cityscapes-512x256",
                 "--out", str(tmp_path / "o")]) == 2
    assert "clip not found" in capsys.readouterr().err
    assert main(["eval", CAMVID, "--model", "no-such-model", "--out", str(tmp_path / "o")]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(["eval", CAMVID, "--model", "espnetv2-s1.0-cityscapes-512x256", "--max-frames", "3",
                 "--out", str(tmp_path / "o")]) == 2
    assert "label-set mismatch" in capsys.readouterr().err
    assert main(["eval", CAMVID, "--model", "espnetv2-s1.0-cityscapes-512x256", "--method", "magic",
                 "--label-map", "cityscapes19_to_camvid11", "--out", str(tmp_path / "o")]) == 2
    assert "unknown method" in capsys.readouterr().err


def test_label_bridges():
    m = load_label_map("cityscapes19_to_camvid11")
    b = bridge_label_sets("cityscapes19", "camvid11", m)
    assert b.eval_set.name == "camvid11" and b.gt_map is None
    cs = bridge_label_sets("cityscapes19", "cityscapes19", load_label_map("cityscapes19_to_car_vs_rest"))
    assert cs.eval_set.name == "car_vs_rest" and cs.gt(np.array([13, 0, 255])).tolist() == [1, 0, 255]
    with pytest.raises(LabelSetMismatch):
        bridge_label_sets("ade150", "camvid11", m)
    assert bridge_label_sets("camvid11", "camvid11", None).eval_set.name == "camvid11"


@pytest.mark.parametrize("method,frames,extra", [
    ("ditta", 6, ["--warmup-ratio", "34", "--iters", "1", "--backend", "openvino", "--preset", "default"]),
    ("tent", 5, ["--warmup-ratio", "40", "--iters", "1"]),
    ("zs-refine", 4, ["--warmup-ratio", "25"]),
])
def test_adaptive_methods_run_end_to_end(shared, tmp_path, method, frames, extra):
    out = tmp_path / method
    rc = main(["eval", CAMVID, "--model", "espnetv2-s1.0-cityscapes-512x256", "--label-map",
               "cityscapes19_to_camvid11", "--method", method, "--max-frames", str(frames), "--no-progress",
               "--overlays", "0", "--cache-dir", str(tmp_path / "cache"), "--out", str(out), *extra])
    assert rc == 0
    res = json.loads((out / "result.json").read_text())
    assert res["method"] == method and 20 < res["mIoU"] < 95 and res["fps"] > 0
    if method == "ditta":
        assert res["targets"]["objects"] > 0 and 0 < res["targets"]["covered_fraction"] <= 1
        # preset default adapts the add-on alone: its distillation term is the loss that trains
        assert res["teacher_seconds"] > 0 and {"distill_addon", "total"} <= set(res["losses"])
        # guard and evaluation streamed on the chosen runtime; the machine beside the speed figures
        assert res["backend"] == "openvino" and res["hyper"]["backend"] == "openvino"
        assert isinstance(res["cpu_flags"], list) and res["cpu"]
        # a second run reuses the cached distillation targets: no teacher time
        rc = main(["eval", CAMVID, "--model", "espnetv2-s1.0-cityscapes-512x256", "--label-map",
                   "cityscapes19_to_camvid11", "--method", method, "--max-frames", str(frames), "--no-progress",
                   "--overlays", "0", "--cache-dir", str(tmp_path / "cache"), "--out", str(out), *extra])
        assert rc == 0 and json.loads((out / "result.json").read_text())["teacher_seconds"] == 0
    if method == "tent":
        assert res["losses"]["entropy_last"] > 0


def test_stride_feeds_every_nth_frame_and_its_interval(tmp_path):
    """``--stride 3`` on a 12-frame 15 Hz clip: the method adapts on and predicts every 3rd frame of the
    stream (0, 3, 6, 9), warm-up included, with a frame interval of 3/15 s, and is scored on those
    frames' labels."""
    import cv2
    import yaml

    from ditta_ros.inference import Prediction
    from ditta_ros.protocol import Method
    from ditta_ros.tools.evaluate import evaluate_clip

    root = tmp_path / "clip"
    (root / "frames").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(12):
        cv2.imwrite(str(root / "frames" / f"{i:06d}.png"), np.full((6, 8, 3), i, np.uint8))
        cv2.imwrite(str(root / "labels" / f"{i:06d}.png"), np.full((6, 8), i % 3, np.uint8))
    (root / "clip.yaml").write_text(yaml.safe_dump({"fps": 15, "label_set": "camvid11"}))

    class Spy(Method):
        name = "spy"

        def __init__(self):
            self.warm, self.seen = [], []

        def adapt(self, frames):
            self.warm = [int(f[0, 0, 0]) for f in frames]
            self.interval = self.frame_interval
            return {}

        def predict(self, frame):
            self.seen.append(int(frame[0, 0, 0]))
            return Prediction.of(np.zeros(frame.shape[:2], np.int64), np.ones(frame.shape[:2], np.float32), 11)

    clip = open_clip(str(root), stride=3)
    assert len(clip) == 4 and clip.name == "clip_s3" and clip.fps == 5.0
    assert all(np.array_equal(clip.label(k), open_clip(str(root)).label(3 * k)) for k in range(4))
    spy = Spy()
    res = evaluate_clip(clip, spy, bridge_label_sets("camvid11", "camvid11", None), str(tmp_path / "out"),
                        warmup_ratio=50, overlays=0, progress=False)
    assert spy.warm == [0, 3] and spy.seen == [6, 9] and spy.interval == pytest.approx(3 / 15)
    assert res["frames"] == 4 and res["labelled_eval_frames"] == 2
    with pytest.raises(ValueError, match="stride must be >= 1"):
        open_clip(str(root), stride=0)


def test_cpu_flags_name_the_extensions_that_decide_inference_speed(tmp_path):
    """The machine record beside speed figures: the model name and the ISA extensions present, in a
    fixed order; nothing where the file has no flags line (or is missing)."""
    from ditta_ros.tools.machine import ISA_FLAGS, cpu_flags, cpu_model

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Example CPU @ 2.0GHz\n"
                    "flags\t\t: fpu sse2 avx512_bf16 avx2 fma amx_tile\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(str(info)) == ["avx2", "fma", "avx512_bf16"] and cpu_model(str(info)) == "Example CPU @ 2.0GHz"
    assert cpu_flags(str(tmp_path / "missing")) == [] and cpu_model(str(tmp_path / "missing"))
    assert set(cpu_flags()) <= set(ISA_FLAGS)


def test_isa_caps_are_recorded_and_read_for_bf16():
    """A cap on the kernels' instruction set (an older CPU emulated on this one) is part of the machine
    record and of its one-line description; only an oneDNN cap below its bf16 kernels counts as capping bf16."""
    from ditta_ros.runtime.openvino import bf16_capped
    from ditta_ros.tools.machine import describe, isa_limits

    env = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "PATH": "/bin", "OPENCV_CPU_DISABLE": ""}
    assert isa_limits(env) == {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    assert isa_limits({}) == {}
    assert bf16_capped({"ONEDNN_MAX_CPU_ISA": "avx2"}) and bf16_capped({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"})
    assert not bf16_capped({}) and not bf16_capped({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"})
    assert not bf16_capped({"ONEDNN_MAX_CPU_ISA": "ALL"})
    m = {"cpu": "Example CPU", "cores": 2, "cpu_flags": ["avx2", "avx512_bf16"], "isa_limits": isa_limits(env)}
    assert describe(m) == ("Example CPU, 2 cores, flags avx2 avx512_bf16; kernels capped by "
                           "ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2")
    assert describe({"cpu": "Old", "cores": 4}) == "Old, 4 cores, ISA flags not recorded"
    assert describe({**m, "isa_limits": {}}) == "Example CPU, 2 cores, flags avx2 avx512_bf16"
