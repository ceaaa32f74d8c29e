"""Test-time adaptation: the loss goes down and only the chosen parameter group moves."""

import numpy as np
import pytest
import torch

from ditta_ros.adapt import AdaptConfig, Adapter, DiTTANet, adapt
from ditta_ros.baselines.tent import configure_tent
from ditta_ros.iss.espnetv2 import ESPNetv2Seg


def _setup():
    torch.manual_seed(0)
    iss = ESPNetv2Seg(s=0.5, num_classes=4, input_size=(64, 32)).eval()
    net = DiTTANet(iss)
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(1, 3, 32, 64, generator=g) for _ in range(3)]
    with torch.no_grad():
        enc = [tuple(e.detach() for e in iss.encode(x)) for x in xs]
    labels = [np.tile(np.repeat(np.arange(4), 10), (24, 1)) for _ in xs]  # 24x40 frames, 4 vertical bands
    obj = [np.where(lab == 1, 1, np.where(lab == 3, 2, 0)) for lab in labels]
    return net, enc, labels, obj


def _snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


@pytest.mark.parametrize("mode", ["faithful", "corrected"])
def test_adaptation_lowers_loss_and_freezes_backbone(mode):
    net, enc, labels, obj = _setup()
    before = _snapshot(net)
    cfg = AdaptConfig(iters=6, loss_mode=mode, lr=3e-3, params="decoder")
    ad = Adapter(net, cfg)
    totals = []
    for _ in range(cfg.iters):
        for t in range(3):
            out = ad.step(enc[t - 1] if t else None, enc[t], (32, 64), torch.as_tensor(labels[t]),
                          torch.as_tensor(obj[t]))
            totals.append(out["total"])
            assert {"distill", "contra", "total"} <= set(out) and (t == 0 or "distill_addon" in out)
    assert np.mean(totals[-3:]) < np.mean(totals[:3])
    after = _snapshot(ad.model)
    for n, p in before.items():
        moved = not torch.equal(p, after[n])
        if n.startswith("iss.base_net."):
            assert not moved, n
    assert not torch.equal(before["iss.bu_dec_l4.merge_layer.3.weight"], after["iss.bu_dec_l4.merge_layer.3.weight"])
    assert not torch.equal(before["addon.query_layer.0.weight"], after["addon.query_layer.0.weight"])
    assert all(torch.equal(p, q) for p, q in zip(before.values(), _snapshot(net).values()))  # original untouched


def test_cls_head_group_moves_only_the_classifier():
    net, enc, labels, obj = _setup()
    before = _snapshot(net)
    adapted, losses = adapt(net, enc, (32, 64), labels, obj, AdaptConfig(iters=1, params="cls_head"))
    moved = {n for n, p in _snapshot(adapted).items() if not torch.equal(p, before[n])}
    assert moved and all(n.startswith("iss.bu_dec_l4.") for n in moved)
    assert not adapted.training and losses["total"] > 0
    with pytest.raises(ValueError):
        Adapter(net, AdaptConfig(loss_mode="other"))


def test_tent_configures_only_norm_affines():
    iss = ESPNetv2Seg(s=0.5, num_classes=4)
    params = configure_tent(iss)
    norms = [m for m in iss.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(params) == 2 * len(norms)
    assert all(m.running_mean is None for m in norms)
    assert sum(p.requires_grad for p in iss.parameters()) == len(params)


def test_dittanet_seeded_projection_does_not_reset_global_rng():
    from ditta_ros.addon import DEFAULT_ADDON_SEED, make_projection_head

    iss = ESPNetv2Seg(s=0.5, num_classes=4)
    draws = []
    for caller_seed in (1, 2):
        torch.manual_seed(caller_seed)
        net = DiTTANet(iss)
        draws.append(torch.rand(3))  # a reset to the add-on seed would make these equal
    assert not torch.equal(draws[0], draws[1])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(DEFAULT_ADDON_SEED)
        ref = make_projection_head(iss.feature_dim)  # the seeded init it documents
    assert all(torch.equal(a, b) for a, b in zip(net.proj.parameters(), ref.parameters()))


def _bn_stats(module):
    return {n: b.detach().clone() for n, b in module.named_buffers() if "running" in n}


def test_frozen_batchnorm_keeps_running_statistics_and_train_mode_replaces_them():
    net, enc, labels, obj = _setup()
    before = _bn_stats(net)
    frozen, _ = adapt(net, enc, (32, 64), labels, obj, AdaptConfig(iters=1, bn="frozen", params="decoder"))
    after = _bn_stats(frozen)
    assert all(torch.equal(before[n], after[n]) for n in before)
    moved = _snapshot(frozen)
    assert not torch.equal(moved["iss.bu_dec_l4.merge_layer.3.weight"],
                           _snapshot(net)["iss.bu_dec_l4.merge_layer.3.weight"])  # weights still adapt
    trained, _ = adapt(net, enc, (32, 64), labels, obj, AdaptConfig(iters=1, bn="train", params="decoder"))
    changed = [n for n, b in _bn_stats(trained).items() if not torch.equal(before[n], b)]
    assert any(not n.startswith("iss.base_net.") for n in changed)
    assert not any(n.startswith("iss.base_net.") for n in changed)  # the backbone never changes


def test_kl_anchor_keeps_the_plain_branch_closer_to_the_frozen_iss():
    net, enc, labels, obj = _setup()
    # targets that disagree with the ISS everywhere: class (ISS + 1) mod 4
    with torch.no_grad():
        iss_pred = [net.heads(None, e)[0] for e in enc]
    free, losses_free = adapt(net, enc, (32, 64), labels, obj, AdaptConfig(iters=4, lr=3e-3, bn="frozen", anchor=0.0,
                                                                                 params="decoder"))
    anch, losses = adapt(net, enc, (32, 64), labels, obj, AdaptConfig(iters=4, lr=3e-3, bn="frozen", anchor=5.0,
                                                                            params="decoder"))
    assert "anchor" in losses and "anchor" not in losses_free

    def kl(model):
        tot = 0.0
        with torch.no_grad():
            for e, ref in zip(enc, iss_pred):
                p = torch.log_softmax(model.heads(None, e)[0], 1)
                r = torch.log_softmax(ref, 1)
                tot += float((r.exp() * (r - p)).sum(1).mean())
        return tot

    assert kl(anch) < kl(free)
    with pytest.raises(ValueError, match="bn"):
        AdaptConfig(bn="half")
    with pytest.raises(ValueError, match="anchor"):
        AdaptConfig(anchor=-1)


def test_the_anchor_reference_computed_once_per_frame_gives_the_same_adaptation():
    """adapt() names each frame to the step (frame_key) so the frozen reference runs once per frame, not once per
    pass; the adapted weights are bit-identical to steps that recompute it every time."""
    net, enc, labels, obj = _setup()
    cfg = AdaptConfig(iters=3, lr=3e-3, bn="frozen", anchor=1.0, params="decoder")
    torch.manual_seed(5)
    cached, _ = adapt(net, enc, (32, 64), labels, obj, cfg)
    torch.manual_seed(5)
    adapter = Adapter(net, cfg)
    calls = []
    heads = adapter.reference.heads
    adapter.reference.heads = lambda *a, **k: calls.append(1) or heads(*a, **k)
    for _ in range(cfg.iters):
        for t in range(len(enc)):
            adapter.step(enc[t - 1] if t > 0 else None, enc[t], (32, 64), torch.as_tensor(labels[t]),
                         torch.as_tensor(obj[t].astype(np.int64)))
    assert len(calls) == cfg.iters * len(enc)  # without a key: every step
    recomputed = _snapshot(adapter.model)
    assert all(torch.equal(p, recomputed[n]) for n, p in _snapshot(cached).items())
    keyed = Adapter(net, cfg)
    keyed.reference.heads = lambda *a, **k: calls.append(1) or heads(*a, **k)
    calls.clear()
    for _ in range(2):
        keyed.step(None, enc[0], (32, 64), torch.as_tensor(labels[0]), torch.as_tensor(obj[0].astype(np.int64)),
                   frame_key=0)
    assert len(calls) == 1


def test_default_adapts_only_the_addon_and_faithful_is_official():
    from ditta_ros.adapt import FAITHFUL_ADAPT

    net, enc, labels, obj = _setup()
    before = _snapshot(net)
    adapted, losses = adapt(net, enc, (32, 64), labels, obj, AdaptConfig(iters=1))
    moved = {n for n, p in _snapshot(adapted).items() if not torch.equal(p, before[n])}
    assert moved and all(n.startswith("addon.") for n in moved) and "anchor" not in losses
    f = FAITHFUL_ADAPT
    assert (f.params, f.loss_mode, f.bn, f.anchor, f.lr, f.iters) == ("decoder", "faithful", "train", 0.0, 1e-3, 5)


@pytest.mark.parametrize("mode", ["faithful", "corrected"])
def test_addon_only_fast_path_equals_the_full_step(mode):
    """With only the add-on adapted and BatchNorm frozen, ``adapt`` decodes each frame once
    and trains the add-on alone; the add-on it returns equals the one the full step
    (plain + add-on + contrastive terms, decoder run every step) gives."""
    net, enc, labels, obj = _setup()
    cfg = AdaptConfig(iters=3, loss_mode=mode, lr=3e-3)
    fast, losses = adapt(net, enc, (32, 64), labels, obj, cfg)
    ad = Adapter(net, cfg)
    assert ad.addon_only
    for _ in range(cfg.iters):
        for t in range(3):
            ad.step(enc[t - 1] if t else None, enc[t], (32, 64), torch.as_tensor(labels[t]), torch.as_tensor(obj[t]))
    slow, start = _snapshot(ad.model), _snapshot(net)
    for n, p in _snapshot(fast).items():
        if n == "addon.key_layer.2.bias":
            # zero gradient in exact arithmetic (a constant key shift adds the same score to every
            # window position: softmax-invariant); Adam turns its rounding noise into lr-sized steps
            continue
        # float rounding only (the full step decodes frames t-1 and t as one batch; Adam
        # magnifies near-zero gradients): far below how far adaptation moved the weight
        moved = (slow[n] - start[n]).abs().max()
        assert (p - slow[n]).abs().max() <= max(0.05 * moved, 1e-6), n
        assert n.startswith("addon.") or torch.equal(p, start[n]), n
    assert any(not torch.equal(p, start[n]) for n, p in _snapshot(fast).items() if n.startswith("addon."))
    assert set(losses) == {"distill_addon", "total", "first_total"}
    # BatchNorm in train mode changes the decoder's outputs with each batch: no fast path
    assert not Adapter(net, AdaptConfig(bn="train")).addon_only
