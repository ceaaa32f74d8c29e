"""Shared fixtures. Tests that need real data read ``../shared`` beside the checkout
(``$DITTA_SHARED`` overrides); it is present on CI and the developers' machines."""

import os

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("DITTA_SHARED", os.path.join(os.path.dirname(REPO), "shared"))
CAMVID = os.path.join(SHARED, "data", "camvid_0016E5_15hz")
ESPNET_DIR = os.path.join(SHARED, "models", "espnetv2_cityscapes")

os.environ.setdefault("DITTA_MODEL_MIRROR", os.path.join(SHARED, "models"))


@pytest.fixture(scope="session")
def shared():
    """The shared data folder; a missing one is an error, not a skip."""
    if not os.path.isdir(os.path.join(SHARED, "models")):
        raise RuntimeError(f"shared data not found at {SHARED} (set $DITTA_SHARED)")
    return SHARED


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Every test gets its own empty $DITTA_HOME cache."""
    monkeypatch.setenv("DITTA_HOME", str(tmp_path / "ditta_home"))
