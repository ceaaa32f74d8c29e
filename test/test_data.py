"""Clip readers: clip folders, VSPW folders and video files."""

import cv2
import numpy as np
import pytest

from ditta_ros.data import ClipError, FolderClip, VideoClip, open_clip, vspw_label


def _write_clip(root, n=4, labels=(0, 2), ignore=255):
    (root / "frames").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(n):
        img = np.full((8, 10, 3), i * 10, np.uint8)
        img[..., 0] = 200  # red channel marks RGB order
        cv2.imwrite(str(root / "frames" / f"{i:06d}.png"), img[:, :, ::-1])
    for i in labels:
        lab = np.full((8, 10), i, np.uint8)
        lab[0, 0] = ignore
        cv2.imwrite(str(root / "labels" / f"{i:06d}.png"), lab)
    (root / "clip.yaml").write_text(f"name: toy\nfps: 15\nlabel_set: camvid11\nignore_index: {ignore}\n")


def test_clip_folder_frames_labels_and_limit(tmp_path):
    _write_clip(tmp_path / "c", ignore=11)
    clip = open_clip(str(tmp_path / "c"))
    assert isinstance(clip, FolderClip) and len(clip) == 4 and clip.fps == 15 and clip.label_set == "camvid11"
    f = clip.frame(1)
    assert f.shape == (8, 10, 3) and f.dtype == np.uint8 and f[0, 0, 0] == 200 and f[0, 0, 2] == 10
    lab = clip.label(2)
    assert lab[0, 0] == 255 and lab[1, 1] == 2  # custom ignore index normalised to 255
    assert clip.label(1) is None
    assert len(open_clip(str(tmp_path / "c"), max_frames=2)) == 2
    with pytest.raises(IndexError):
        clip.frame(9)


def test_corrupt_frame_and_missing_clip_errors(tmp_path):
    _write_clip(tmp_path / "c")
    (tmp_path / "c" / "frames" / "000001.png").write_bytes(b"not a png")
    clip = open_clip(str(tmp_path / "c"))
    with pytest.raises(ClipError, match="cannot decode"):
        clip.frame(1)
    with pytest.raises(ClipError, match="not found"):
        open_clip(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClipError, match="neither"):
        open_clip(str(tmp_path / "empty"))


def test_vspw_layout_label_semantics(tmp_path):
    v = tmp_path / "video1"
    (v / "origin").mkdir(parents=True)
    (v / "mask").mkdir()
    cv2.imwrite(str(v / "origin" / "00000001.jpg"), np.zeros((4, 4, 3), np.uint8))
    cv2.imwrite(str(v / "mask" / "00000001.png"), np.array([[0, 1, 124, 255]] * 4, np.uint8))
    clip = open_clip(str(v))
    assert clip.label_set == "vspw124"
    assert clip.label(0)[0].tolist() == [255, 0, 123, 255]
    assert vspw_label(np.array([5])).tolist() == [4]


def test_video_file(tmp_path):
    path = str(tmp_path / "v.avi")
    w = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
    for i in range(6):
        w.write(np.full((24, 32, 3), 40 * i, np.uint8))
    w.release()
    clip = open_clip(path)
    assert isinstance(clip, VideoClip) and len(clip) == 6 and abs(clip.fps - 10) < 1e-6
    assert abs(int(clip.frame(3).mean()) - 120) <= 3
    assert abs(int(clip.frame(0).mean()) - 0) <= 3  # backwards seek
    assert clip.label(0) is None
