"""The temporal add-on (Eq. 1), reliability (Eq. 2) and fusion (Eq. 3)."""

import numpy as np
import pytest
import torch

from ditta_ros.addon import (TemporalAddon, dense_window_attention, entropy, fuse, local_window_attention,
                             make_projection_head, reliability)


@pytest.mark.parametrize("h,w,r", [(9, 13, 5), (20, 17, 5), (6, 6, 2), (4, 30, 3), (12, 12, 0)])
def test_local_window_equals_dense_masked_reference(h, w, r):
    g = torch.Generator().manual_seed(h * 100 + w)
    q = torch.randn(2, 8, h, w, generator=g, dtype=torch.float64)
    k = torch.randn(2, 8, h, w, generator=g, dtype=torch.float64)
    v = torch.randn(2, 5, h, w, generator=g, dtype=torch.float64)
    ours = local_window_attention(q, k, v, r)
    ref = dense_window_attention(q, k, v, r)
    assert ours.shape == (2, 5, h, w)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("h,w,r,tile", [(9, 13, 5, 8), (20, 17, 5, 8), (6, 6, 2, 3), (4, 30, 3, 1), (12, 12, 0, 4),
                                        (16, 16, 5, 16)])
def test_tiled_attention_equals_dense_masked_reference(h, w, r, tile):
    """The exported (tiled matrix) form: same keys, same numbers, also where tiles overhang the map."""
    from ditta_ros.addon import tiled_window_attention

    g = torch.Generator().manual_seed(h * 100 + w + tile)
    q = torch.randn(2, 8, h, w, generator=g, dtype=torch.float64)
    k = torch.randn(2, 8, h, w, generator=g, dtype=torch.float64)
    v = torch.randn(2, 5, h, w, generator=g, dtype=torch.float64)
    ours = tiled_window_attention(q, k, v, r, tile)
    assert ours.shape == (2, 5, h, w) and torch.isfinite(ours).all()
    assert torch.allclose(ours, dense_window_attention(q, k, v, r), atol=1e-6, rtol=0)


def test_float32_agreement_and_radius_zero_copies_value():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, 16, 15, 21, generator=g), torch.randn(1, 16, 15, 21, generator=g)
    v = torch.randn(1, 7, 15, 21, generator=g)
    assert (local_window_attention(q, k, v, 5) - dense_window_attention(q, k, v, 5)).abs().max() < 1e-5
    assert torch.equal(local_window_attention(q, k, v, 0), v)


def test_attention_rejects_bad_shapes():
    with pytest.raises(ValueError, match="shape mismatch"):
        local_window_attention(torch.zeros(1, 4, 5, 5), torch.zeros(1, 4, 5, 6), torch.zeros(1, 2, 5, 5))
    with pytest.raises(ValueError, match="radius"):
        local_window_attention(torch.zeros(1, 4, 5, 5), torch.zeros(1, 4, 5, 5), torch.zeros(1, 2, 5, 5), -1)


def test_addon_module_matches_explicit_computation_and_is_seeded():
    a, b = TemporalAddon(12, radius=2, seed=7), TemporalAddon(12, radius=2, seed=7)
    c = TemporalAddon(12, radius=2, seed=8)
    for pa, pb, pc in zip(a.parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    bound = 1 / 12 ** 0.5
    assert all(p.abs().max() <= bound for p in a.parameters())
    g = torch.Generator().manual_seed(3)
    ft, fp, lp = torch.randn(1, 12, 7, 9, generator=g), torch.randn(1, 12, 7, 9, generator=g), torch.randn(1, 4, 7, 9, generator=g)
    q = a.query_layer(ft.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(1, 12, 7, 9)
    k = a.key_layer(fp.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(1, 12, 7, 9)
    with torch.no_grad():
        assert torch.allclose(a(ft, fp, lp), dense_window_attention(q, k, lp, 2), atol=1e-5)
    names = set(a.state_dict())
    assert {"query_layer.0.weight", "query_layer.2.bias", "key_layer.0.weight", "key_layer.2.weight"} <= names
    assert set(make_projection_head(12).state_dict()) == {f"{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")}


def test_addon_exports_to_onnx_and_matches(tmp_path):
    import onnxruntime as ort

    addon = TemporalAddon(8, radius=3, seed=1).eval()
    g = torch.Generator().manual_seed(0)
    args = (torch.randn(1, 8, 10, 12, generator=g), torch.randn(1, 8, 10, 12, generator=g),
            torch.randn(1, 5, 10, 12, generator=g))
    path = str(tmp_path / "addon.onnx")
    torch.onnx.export(addon, args, path, input_names=["feat_t", "feat_prev", "logits_prev"],
                      output_names=["logits_addon"], opset_version=17, dynamo=False)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    out = sess.run(None, {n: a.numpy() for n, a in zip(["feat_t", "feat_prev", "logits_prev"], args)})[0]
    with torch.no_grad():
        ref = addon(*args).numpy()
    assert np.abs(out - ref).max() < 1e-4


def test_entropy_and_reliability_guard_zero_log_zero():
    one_hot = torch.zeros(1, 3, 2, 2)
    one_hot[:, 0] = 1
    assert torch.equal(entropy(one_hot), torch.zeros(1, 2, 2))
    r = reliability(one_hot)  # max entropy 0 -> R = 1, no NaN
    assert torch.equal(r, torch.ones(1, 2, 2))
    p = torch.tensor([[1 / 3, 0.5, 1.0, 0.8], [1 / 3, 0.5, 0.0, 0.2], [1 / 3, 0.0, 0.0, 0.0]]).view(1, 3, 2, 2)
    r = reliability(p)
    e = np.array([np.log(3), np.log(2), 0.0, -(0.8 * np.log(0.8) + 0.2 * np.log(0.2))])
    assert np.allclose(r.flatten().numpy(), 1 - e / e.max(), atol=1e-6)
    assert r.min() == 0 and not torch.isnan(r).any()


def test_fusion_weights_by_reliability_only_where_plain_is_weak():
    # two pixels: pixel 0 plain-confident, pixel 1 plain-uncertain
    plain = torch.tensor([[0.98, 0.5], [0.01, 0.3], [0.01, 0.2]]).view(1, 3, 1, 2)
    addon = torch.tensor([[0.2, 0.9], [0.2, 0.05], [0.6, 0.05]]).view(1, 3, 1, 2)
    fused, r_plain = fuse(plain, addon, tau=0.8)
    rp, ra = reliability(plain)[0, 0], reliability(addon)[0, 0]
    assert rp[0] >= 0.8 > rp[1]
    assert torch.allclose(fused[0, :, 0, 0], plain[0, :, 0, 0])
    w = rp[1] / (rp[1] + ra[1])
    assert torch.allclose(fused[0, :, 0, 1], w * plain[0, :, 0, 1] + (1 - w) * addon[0, :, 0, 1])
    assert torch.allclose(fused.sum(1), torch.ones(1, 1, 2))
    assert torch.equal(fuse(plain, addon, tau=0.0)[0], plain)
    assert torch.equal(r_plain, reliability(plain))


def test_fusion_zero_over_zero_gives_half():
    uniform = torch.full((1, 4, 1, 1), 0.25)  # a single uniform pixel: E = max(E) -> R = 0
    other = torch.tensor([0.7, 0.1, 0.1, 0.1]).view(1, 4, 1, 1)
    fused, _ = fuse(uniform, other, tau=0.8)
    assert torch.allclose(fused, 0.5 * uniform + 0.5 * other)
    with pytest.raises(ValueError):
        fuse(uniform, torch.zeros(1, 3, 1, 1))


def test_inference_and_autograd_paths_agree_and_gradients_match_dense():
    g = torch.Generator().manual_seed(5)
    q = torch.randn(2, 6, 8, 11, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 6, 8, 11, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 3, 8, 11, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 3, 8, 11, generator=g, dtype=torch.float64)
    ours = local_window_attention(q, k, v, 2)  # hand-written backward
    grads = torch.autograd.grad((ours * w).sum(), (q, k, v))
    ref = dense_window_attention(q, k, v, 2)
    ref_grads = torch.autograd.grad((ref * w).sum(), (q, k, v))
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-9)
    with torch.no_grad():
        fast = local_window_attention(q, k, v, 2)  # buffered in-place path
    assert torch.allclose(ours.detach(), fast, atol=1e-12)
    assert torch.autograd.gradcheck(lambda a, b, c: local_window_attention(a, b, c, 1),
                                    (q[:1, :, :4, :5].detach().requires_grad_(),
                                     k[:1, :, :4, :5].detach().requires_grad_(),
                                     v[:1, :, :4, :5].detach().requires_grad_()))


def test_addon_grid_stride_pools_attends_and_resizes_back():
    import torch.nn.functional as F

    from ditta_ros.addon import TemporalAddon, dense_window_attention

    torch.manual_seed(3)
    a1 = TemporalAddon(6, radius=2, seed=4).eval()
    a2 = TemporalAddon(6, radius=2, seed=4, grid_stride=2).eval()
    ft, fp, lp = torch.randn(1, 6, 11, 14), torch.randn(1, 6, 11, 14), torch.randn(1, 3, 11, 14)
    with torch.no_grad():
        out = a2(ft, fp, lp)
        pooled = [F.avg_pool2d(t, 2, 2, ceil_mode=True) for t in (ft, fp, lp)]  # 6x7 grid
        q = a1._per_position(a1.query_layer, pooled[0])
        k = a1._per_position(a1.key_layer, pooled[1])
        ref = F.interpolate(dense_window_attention(q, k, pooled[2], 2), size=(11, 14), mode="bilinear",
                            align_corners=False)
    assert out.shape == (1, 3, 11, 14)
    assert torch.allclose(out, ref, atol=1e-5)
    assert not torch.allclose(out, a1(ft, fp, lp), atol=1e-2)  # the stride changes the result
    with pytest.raises(ValueError):
        TemporalAddon(6, grid_stride=0)
