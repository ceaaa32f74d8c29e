"""SegFormer via transformers (random tiny configs) and the mmseg checkpoint converter."""

import json

import pytest
import torch

from ditta_ros.addon import TemporalAddon, make_projection_head
from ditta_ros.iss import load_model
from ditta_ros.iss.segformer import convert_mmseg_checkpoint, load_addon_state, load_segformer

HIDDEN = [8, 16, 24, 32]
DEC = 16
CLASSES = 6


@pytest.fixture
def hf_dir(tmp_path):
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(0)
    cfg = SegformerConfig(depths=[1, 1, 1, 1], hidden_sizes=HIDDEN, num_attention_heads=[1, 1, 1, 1],
                          decoder_hidden_size=DEC, num_labels=CLASSES, sr_ratios=[8, 4, 2, 1])
    model = SegformerForSemanticSegmentation(cfg).eval()
    d = tmp_path / "segformer"
    model.save_pretrained(d)
    (d / "preprocessor_config.json").write_text(json.dumps({"size": {"height": 64, "width": 96},
                                                            "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25] * 3}))
    return str(d), model


def test_interface_shapes_and_features_feed_hf_logits(hf_dir):
    path, ref = hf_dir
    model = load_segformer(path)
    assert model.preprocess.size == (96, 64) and model.preprocess.mean == (0.5, 0.5, 0.5)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        feats, logits = model(x)
        ref_logits = ref(pixel_values=x).logits
    assert feats.shape == (2, DEC, 16, 24) and logits.shape == (2, CLASSES, 16, 24)
    assert torch.allclose(logits, ref_logits, atol=1e-5)
    assert (feats >= 0).all()  # after ReLU, before dropout
    groups = model.param_groups()
    assert {id(p) for p in groups["cls_head"]} < {id(p) for p in groups["decoder"]}
    assert not {id(p) for p in groups["backbone"]} & {id(p) for p in groups["decoder"]}


def test_load_model_on_directory(hf_dir):
    model, info = load_model(hf_dir[0])
    assert info.family == "segformer" and model.num_classes == CLASSES and info.label_set == "custom"
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_segformer(str(hf_dir[0]) + "_missing")


def _mmseg_checkpoint(heads=(1, 1, 1, 1)):
    """A synthetic mmseg SegFormer + DiTTA add-on state dict with the release's key names."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    sd, cin = {}, 3
    for s, h in enumerate(HIDDEN, 1):
        k = 7 if s == 1 else 3
        sd[f"backbone.patch_embed{s}.proj.weight"] = r(h, cin, k, k)
        sd[f"backbone.patch_embed{s}.proj.bias"] = r(h)
        sd[f"backbone.patch_embed{s}.norm.weight"] = r(h)
        sd[f"backbone.patch_embed{s}.norm.bias"] = r(h)
        b = f"backbone.block{s}.0."
        for n in ("norm1", "norm2"):
            sd[b + n + ".weight"], sd[b + n + ".bias"] = r(h), r(h)
        sd[b + "attn.q.weight"], sd[b + "attn.q.bias"] = r(h, h), r(h)
        sd[b + "attn.kv.weight"], sd[b + "attn.kv.bias"] = r(2 * h, h), r(2 * h)
        sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"] = r(h, h), r(h)
        sr = {1: 8, 2: 4, 3: 2}.get(s)
        if sr:
            sd[b + "attn.sr.weight"], sd[b + "attn.sr.bias"] = r(h, h, sr, sr), r(h)
            sd[b + "attn.norm.weight"], sd[b + "attn.norm.bias"] = r(h), r(h)
        sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"] = r(4 * h, h), r(4 * h)
        sd[b + "mlp.dwconv.dwconv.weight"], sd[b + "mlp.dwconv.dwconv.bias"] = r(4 * h, 1, 3, 3), r(4 * h)
        sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"] = r(h, 4 * h), r(h)
        sd[f"backbone.norm{s}.weight"], sd[f"backbone.norm{s}.bias"] = r(h), r(h)
        sd[f"decode_head.linear_c{s}.proj.weight"], sd[f"decode_head.linear_c{s}.proj.bias"] = r(DEC, h), r(DEC)
        cin = h
    sd["decode_head.linear_fuse.conv.weight"] = r(DEC, 4 * DEC, 1, 1)
    for n in ("weight", "bias", "running_mean"):
        sd[f"decode_head.linear_fuse.bn.{n}"] = r(DEC)
    sd["decode_head.linear_fuse.bn.running_var"] = r(DEC).abs() + 0.5
    sd["decode_head.linear_fuse.bn.num_batches_tracked"] = torch.tensor(7)
    sd["decode_head.linear_pred.weight"], sd["decode_head.linear_pred.bias"] = r(CLASSES, DEC, 1, 1), r(CLASSES)
    sd["decode_head.conv_seg.weight"] = r(CLASSES, DEC, 1, 1)  # mmseg base-class leftover: dropped
    for layer in ("query_layer", "key_layer"):
        for i in (0, 2):
            sd[f"decode_head.{layer}.{i}.weight"], sd[f"decode_head.{layer}.{i}.bias"] = r(DEC, DEC), r(DEC)
    for i in (0, 2, 4):
        sd[f"decode_head.proj_feat.{i}.weight"], sd[f"decode_head.proj_feat.{i}.bias"] = r(DEC, DEC, 1, 1), r(DEC)
    return sd


def test_mmseg_converter_places_every_tensor(tmp_path):
    sd = _mmseg_checkpoint()
    src = tmp_path / "ditta_segformer.pth"
    torch.save({"state_dict": sd, "meta": {}}, src)
    out = tmp_path / "hf"
    summary = convert_mmseg_checkpoint(str(src), str(out), num_attention_heads=(1, 1, 1, 1), input_size=(96, 64))
    assert summary["config"]["depths"] == [1, 1, 1, 1] and summary["config"]["hidden_sizes"] == HIDDEN
    assert summary["config"]["num_labels"] == CLASSES and summary["dropped"] == ["decode_head.conv_seg.weight"]
    model = load_segformer(str(out))
    hf = model.hf
    att = hf.segformer.stages[1].blocks[0].attention
    h = HIDDEN[1]
    assert torch.equal(att.k_proj.weight, sd["backbone.block2.0.attn.kv.weight"][:h])
    assert torch.equal(att.v_proj.weight, sd["backbone.block2.0.attn.kv.weight"][h:])
    assert torch.equal(att.q_proj.bias, sd["backbone.block2.0.attn.q.bias"])
    assert torch.equal(hf.decode_head.classifier.weight, sd["decode_head.linear_pred.weight"])
    assert torch.equal(hf.decode_head.batch_norm.running_var, sd["decode_head.linear_fuse.bn.running_var"])
    assert torch.equal(hf.decode_head.linear_projections[2].proj.weight, sd["decode_head.linear_c3.proj.weight"])
    assert torch.equal(hf.segformer.stages[0].layer_norm.weight, sd["backbone.norm1.weight"])
    addon_sd = load_addon_state(str(out))
    addon = TemporalAddon(DEC, seed=None)
    addon.load_state_dict({k: v for k, v in addon_sd.items() if not k.startswith("proj_feat.")}, strict=True)
    assert torch.equal(addon.key_layer[2].weight, sd["decode_head.key_layer.2.weight"])
    proj = make_projection_head(DEC)
    proj.load_state_dict({k[len("proj_feat."):]: v for k, v in addon_sd.items() if k.startswith("proj_feat.")})
    with torch.no_grad():
        feats, logits = model(torch.randn(1, 3, 64, 96))
    assert logits.shape == (1, CLASSES, 16, 24) and torch.isfinite(logits).all()


def test_converter_rejects_other_checkpoints(tmp_path):
    src = tmp_path / "x.pth"
    torch.save({"state_dict": {"foo.weight": torch.zeros(1)}}, src)
    with pytest.raises(ValueError, match="not an mmseg SegFormer"):
        convert_mmseg_checkpoint(str(src), str(tmp_path / "o"))
