"""Bag tools: make (clip -> rosbag2), eval (stamp matching + metrics), and play -> record over real DDS."""

import json
import os
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from ditta_ros.tools import bag

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _clip(root, n=5):
    (root / "frames").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(1)
    for i in range(n):
        cv2.imwrite(str(root / "frames" / f"{i:06d}.png"), rng.integers(0, 255, (12, 16, 3), dtype=np.uint8))
        lab = rng.integers(0, 11, (12, 16)).astype(np.uint8)
        lab[0, 0] = 255
        cv2.imwrite(str(root / "labels" / f"{i:06d}.png"), lab)
    (root / "clip.yaml").write_text("name: toy\nfps: 10\nlabel_set: camvid11\n")
    return str(root)


@pytest.mark.parametrize("storage,compressed", [("sqlite3", False), ("mcap", False), ("sqlite3", True)])
def test_make_bag_round_trips_frames_labels_and_stamps(tmp_path, storage, compressed):
    from ditta_ros.data import open_clip

    clip_dir = _clip(tmp_path / "clip")
    out = str(tmp_path / "bag")
    summary = bag.make_bag(clip_dir, out, storage=storage, compressed=compressed, progress=False)
    assert summary["frames"] == 5 and summary["labelled_frames"] == 5 and summary["fps"] == 10.0
    clip = open_clip(clip_dir)
    gts = bag.read_images(out, bag.GT_TOPIC)
    stamps = sorted(gts)
    assert np.allclose(np.diff(stamps), 1e8)  # 10 Hz
    for i, s in enumerate(stamps):
        assert np.array_equal(gts[s], clip.label(i))
    if not compressed:
        frames = bag.read_images(out, bag.IMAGE_TOPIC)
        assert sorted(frames) == stamps and np.array_equal(frames[stamps[2]], clip.frame(2))
    with pytest.raises(FileExistsError):
        bag.make_bag(clip_dir, out, progress=False)


def test_passes_play_the_clip_back_and_forth_with_rising_stamps(tmp_path):
    from ditta_ros.data import open_clip

    assert bag.pingpong(4, 3) == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3] and bag.pingpong(5) == [0, 1, 2, 3, 4]
    assert bag.pingpong(1, 3) == [0, 0, 0]
    with pytest.raises(ValueError):
        bag.pingpong(5, 0)
    clip_dir = _clip(tmp_path / "clip")
    out = str(tmp_path / "bag")
    summary = bag.make_bag(clip_dir, out, progress=False, passes=2)
    assert summary["frames"] == 9 and summary["labelled_frames"] == 9
    frames = bag.read_images(out, bag.IMAGE_TOPIC)
    stamps = sorted(frames)
    assert len(stamps) == 9 and np.allclose(np.diff(stamps), 1e8)  # one stream at 10 Hz, no repeated stamp
    clip = open_clip(clip_dir)
    for k, i in enumerate([0, 1, 2, 3, 4, 3, 2, 1, 0]):
        assert np.array_equal(frames[stamps[k]], clip.frame(i))


def _write_semantic(path, labels_by_stamp, delay_ns=5_000_000):
    from rosbags.rosbag2 import Writer

    ts = bag._typestore()
    Image = ts.types["sensor_msgs/msg/Image"]
    with Writer(path, version=9) as w:
        cin = w.add_connection(bag.IMAGE_TOPIC, "sensor_msgs/msg/Image", typestore=ts)
        cout = w.add_connection(bag.SEMANTIC_TOPIC, "sensor_msgs/msg/Image", typestore=ts)
        for s, lab in sorted(labels_by_stamp.items()):
            hdr = bag._header(ts, s, "camera")
            img = Image(header=hdr, height=lab.shape[0], width=lab.shape[1], encoding="mono8", is_bigendian=0,
                        step=lab.shape[1], data=np.ascontiguousarray(lab, np.uint8).reshape(-1))
            w.write(cin, s + 1, ts.serialize_cdr(img, "sensor_msgs/msg/Image"))
            w.write(cout, s + 1 + delay_ns, ts.serialize_cdr(img, "sensor_msgs/msg/Image"))


def test_eval_bag_matches_by_stamp_and_scores(tmp_path):
    clip_dir = _clip(tmp_path / "clip", n=10)  # mVC8 needs more than 8 frames
    gt_bag = str(tmp_path / "gt")
    bag.make_bag(clip_dir, gt_bag, progress=False)
    gts = bag.read_images(gt_bag, bag.GT_TOPIC)
    perfect = {s: np.where(g == 255, 0, g) for s, g in gts.items()}
    _write_semantic(str(tmp_path / "rec_ok"), perfect)
    res = bag.eval_bag(str(tmp_path / "rec_ok"), gt_bag, str(tmp_path / "out_ok"), model_label_set="camvid11")
    assert res["mIoU"] == pytest.approx(100.0) and res["matched_frames"] == 10 and res["missing_frames"] == 0
    assert res["latency_ms"]["median"] == pytest.approx(5.0, abs=1e-3)
    assert json.load(open(tmp_path / "out_ok" / "result.json"))["mVC8"] == pytest.approx(100.0)
    # one frame missing, one wrong, and the warm-up skipped: scores follow
    stamps = sorted(perfect)
    bad = dict(perfect)
    del bad[stamps[9]]
    bad[stamps[3]] = (perfect[stamps[3]] + 1) % 11
    _write_semantic(str(tmp_path / "rec_bad"), bad)
    res = bag.eval_bag(str(tmp_path / "rec_bad"), gt_bag, str(tmp_path / "out_bad"), model_label_set="camvid11",
                       skip_first=1)
    assert res["matched_frames"] == 8 and res["missing_frames"] == 1 and res["mIoU"] < 95
    # a clip folder as ground truth (frame i <-> i-th recorded input stamp)
    res = bag.eval_bag(str(tmp_path / "rec_ok"), clip_dir, str(tmp_path / "out_clip"), model_label_set="camvid11")
    assert res["mIoU"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="no /ditta/semantic stamp"):
        _write_semantic(str(tmp_path / "rec_none"), {1: perfect[stamps[0]]})
        bag.eval_bag(str(tmp_path / "rec_none"), gt_bag, str(tmp_path / "o"), model_label_set="camvid11")


def test_play_then_record_over_dds(tmp_path):
    from ditta_ros.resources import local_ros_env

    env = local_ros_env(tmp_path / "log", pythonpath=ROOT)
    clip_dir = _clip(tmp_path / "clip", n=8)
    src = str(tmp_path / "src")
    bag.make_bag(clip_dir, src, progress=False)
    rec = str(tmp_path / "rec")
    recorder = subprocess.Popen([sys.executable, "-m", "ditta_ros", "bag", "record", bag.IMAGE_TOPIC, "--out", rec,
                                 "--count", "8", "--duration", "60", "--ready-topics", bag.IMAGE_TOPIC], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    player = subprocess.run([sys.executable, "-m", "ditta_ros", "bag", "play", src, "--rate", "2",
                             "--topics", bag.IMAGE_TOPIC, "--wait", "30"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert "published 8 messages" in player.stdout, player.stdout + player.stderr
    out, _ = recorder.communicate(timeout=90)
    # the recording is complete once its result line is out; a DDS participant teardown that hangs after it
    # (rclpy, now and then on a loaded machine) is ended by the CLI's watchdog with status 1
    # (test_cli_teardown_watchdog_ends_a_hung_process): that is not a failed recording
    teardown_hang = recorder.returncode == 1 and '"messages": {"/camera/image_raw": 8}' in out and "Timeout" in out
    assert recorder.returncode == 0 or teardown_hang, out
    # the readiness line (what the route waits for) comes once the player's publisher matched, before the data
    assert out.index(f"{bag.READY_LINE} {bag.IMAGE_TOPIC}") < out.index('"messages"'), out
    frames_in, frames_out = bag.read_images(src, bag.IMAGE_TOPIC), bag.read_images(rec, bag.IMAGE_TOPIC)
    assert sorted(frames_out) == sorted(frames_in)  # every frame, header stamps unchanged
    assert all(np.array_equal(frames_in[s], frames_out[s]) for s in frames_in)


def test_record_refuses_ready_topics_it_does_not_record(tmp_path):
    from ditta_ros.tools.bag_ros import record_bag

    with pytest.raises(ValueError, match="not among the recorded topics"):
        record_bag([bag.SEMANTIC_TOPIC], str(tmp_path / "rec"), ready_topics=["/ditta/status"])
    assert not (tmp_path / "rec").exists()


def test_cli_teardown_watchdog_ends_a_hung_process():
    """After `bag play/record` report their result, a hung ROS teardown ends the process (status 1) instead
    of spinning forever; here the 'hang' is a sleep."""
    code = ("import time, ditta_ros.tools.cli as c; c.TEARDOWN_TIMEOUT_S = 1.0; "
            "c._report_then_guard('published 3 messages'); time.sleep(60)")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 1 and time.monotonic() - t0 < 20
    assert proc.stdout.startswith("published 3 messages") and "Thread" in proc.stderr
