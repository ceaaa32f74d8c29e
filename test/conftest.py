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


def make_spin_until(node, proc, log_path):
    """``spin_until(cond, timeout) -> bool``: spin the rclpy ``node`` until ``cond()``
    holds or ``timeout`` seconds pass, failing at once (with the log tail) if the
    node subprocess ``proc`` died."""
    import time

    import rclpy

    def spin_until(cond, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end and not cond():
            rclpy.spin_once(node, timeout_sec=0.05)
            assert proc.poll() is None, "node died:\n" + log_path.read_text()[-3000:]
        return cond()

    return spin_until


def stop_process(proc, grace: float = 15.0) -> None:
    """Terminate a subprocess still running (SIGTERM, then SIGKILL after ``grace`` s)."""
    import subprocess

    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
