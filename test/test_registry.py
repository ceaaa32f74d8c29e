"""Model registry and weight fetching (cache -> mirrors -> upstream, sha256 checked)."""

import os

import pytest

from ditta_ros import registry


def test_cards_are_complete():
    cards = registry.list_cards()
    for name in ("espnetv2-s2.0-cityscapes-1024x512", "espnetv2-s2.0-cityscapes-512x256",
                 "espnetv2-s1.0-cityscapes-512x256"):
        c = cards[name]
        assert c.family == "espnetv2" and c.label_set == "cityscapes19" and c.num_classes == 20
        assert len(c.weights["sha256"]) == 64 and c.weights["url"].startswith("https://") and c.licence


def test_fetch_from_mirror_then_cache(shared, tmp_path, monkeypatch):
    monkeypatch.setenv("DITTA_MODEL_MIRROR", os.path.join(shared, "models"))
    path = registry.fetch("espnetv2-s1.0-cityscapes-512x256")
    assert path.startswith(os.path.join(shared, "models"))
    cached = registry.copy_to_cache("espnetv2-s1.0-cityscapes-512x256")
    assert cached.startswith(os.environ["DITTA_HOME"]) and os.path.isfile(cached)
    monkeypatch.setenv("DITTA_MODEL_MIRROR", "")
    assert registry.fetch("espnetv2-s1.0-cityscapes-512x256", allow_download=False) == cached


def test_fetch_failure_lists_every_place(shared, tmp_path, monkeypatch):
    bad_mirror = tmp_path / "mirror"
    (bad_mirror / "espnetv2_cityscapes").mkdir(parents=True)
    (bad_mirror / "espnetv2_cityscapes" / "espnetv2_s_1.0_city_512x256.pth").write_bytes(b"corrupt")
    monkeypatch.setenv("DITTA_MODEL_MIRROR", str(bad_mirror))

    def no_network(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(registry.urllib.request, "urlopen", no_network)
    with pytest.raises(registry.ModelNotFoundError) as err:
        registry.fetch("espnetv2-s1.0-cityscapes-512x256")
    msg = str(err.value)
    assert "sha256 mismatch" in msg and os.environ["DITTA_HOME"] in msg
    assert "github.com/sacmehta/EdgeNets" in msg and "network unreachable" in msg


def test_unknown_model_lists_registered():
    with pytest.raises(registry.ModelNotFoundError, match="espnetv2-s2.0-cityscapes-1024x512"):
        registry.get_card("no-such-model")
