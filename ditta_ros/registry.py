"""Model registry: one YAML card per model in ``models/``, and weight fetching.

A card names the family, the weight file, its upstream URL, sha256, licence,
label set and input size. :func:`fetch` resolves a weight file in this order and
checks its sha256 every time:

1. the cache, ``$DITTA_HOME/models/<name>/<file>`` (``$DITTA_HOME`` defaults to
   ``~/.cache/ditta``);
2. every folder in ``$DITTA_MODEL_MIRROR`` (``os.pathsep``-separated), at the
   card's ``mirror_path`` and then at ``<file>`` (CI points it at ``../shared/models``);
3. the upstream URL, downloaded into the cache with a progress bar.

On failure the error lists every place it looked and why each failed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass, field
from typing import Dict, List

import yaml

from .paths import ditta_home
from .resources import share_dir


class ModelNotFoundError(FileNotFoundError):
    """A model name is unknown, or its weights could not be found anywhere."""


@dataclass
class ModelCard:
    """Parsed ``models/<name>.yaml``."""

    name: str
    family: str
    label_set: str
    num_classes: int
    input_size: tuple
    weights: Dict[str, str]
    licence: str = ""
    description: str = ""
    params: Dict[str, object] = field(default_factory=dict)
    path: str = ""

    @classmethod
    def from_file(cls, path: str) -> "ModelCard":
        with open(path) as f:
            d = yaml.safe_load(f)
        try:
            return cls(name=d["name"], family=d["family"], label_set=d.get("label_set", ""),
                       num_classes=int(d.get("num_classes", 0)), input_size=tuple(d.get("input_size", ())),
                       weights=dict(d.get("weights", {})), licence=d.get("licence", ""),
                       description=d.get("description", ""), params=dict(d.get("params", {})), path=path)
        except KeyError as err:
            raise ValueError(f"model card {path} lacks field {err}") from None


def cards_dir() -> str:
    """Folder of the model cards (``models/`` in a checkout, ``share/ditta_ros/models`` installed)."""
    return share_dir("models")


def list_cards() -> Dict[str, ModelCard]:
    """All cards by name; raises ``ValueError`` for a card missing a required field."""
    d = cards_dir()
    cards = {}
    for f in sorted(os.listdir(d)):
        if f.endswith((".yaml", ".yml")):
            card = ModelCard.from_file(os.path.join(d, f))
            cards[card.name] = card
    return cards


def get_card(name: str) -> ModelCard:
    """The card called ``name``; raises :class:`ModelNotFoundError` listing the known names."""
    cards = list_cards()
    if name not in cards:
        raise ModelNotFoundError(f"unknown model {name!r}; registered: {', '.join(cards)} "
                                 "(or pass a path to a weight file / Hugging Face directory)")
    return cards[name]


def mirrors() -> List[str]:
    """Mirror folders from ``$DITTA_MODEL_MIRROR`` (``os.pathsep``-separated), in order."""
    return [m for m in os.environ.get("DITTA_MODEL_MIRROR", "").split(os.pathsep) if m]


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in ``chunk``-byte blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _download(url: str, dest: str, timeout: float = 30.0) -> None:
    from tqdm import tqdm

    os.makedirs(os.path.dirname(dest), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest), suffix=".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, os.fdopen(fd, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=os.path.basename(dest)) as bar:
                for block in iter(lambda: resp.read(1 << 16), b""):
                    out.write(block)
                    bar.update(len(block))
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fetch(name: str, allow_download: bool = True) -> str:
    """Path of the verified weight file of the registered model ``name``.

    Raises:
        ModelNotFoundError: unknown name, or no location held a file with the
            card's sha256 (every location tried is listed with its outcome).
    """
    card = get_card(name)
    w = card.weights
    fname, want = w["file"], w.get("sha256", "").lower()
    tried: List[str] = []

    def ok(path: str) -> bool:
        if not os.path.isfile(path):
            tried.append(f"{path}: not there")
            return False
        if want and sha256_file(path) != want:
            tried.append(f"{path}: sha256 mismatch")
            return False
        return True

    cached = os.path.join(ditta_home(), "models", card.name, fname)
    if ok(cached):
        return cached
    for m in mirrors():
        for rel in filter(None, (w.get("mirror_path"), fname)):
            p = os.path.join(m, rel)
            if ok(p):
                return p
    if not mirrors():
        tried.append("$DITTA_MODEL_MIRROR: not set")
    url = w.get("url")
    if url and allow_download:
        try:
            _download(url, cached)
            if ok(cached):
                return cached
        except Exception as err:  # network errors are reported with the rest
            tried.append(f"{url}: {type(err).__name__}: {err}")
    elif url:
        tried.append(f"{url}: download not allowed")
    raise ModelNotFoundError(f"weights of {card.name!r} ({fname}, sha256 {want[:12]}...) not found:\n  - "
                             + "\n  - ".join(tried))


def describe(card: ModelCard) -> str:
    """One line for ``ditta models list``."""
    return (f"{card.name}: {card.description or card.family} | labels {card.label_set} | "
            f"input {'x'.join(map(str, card.input_size))} | {card.licence}")


def copy_to_cache(name: str) -> str:
    """Fetch ``name`` and make sure a copy sits in the cache (``ditta models fetch``)."""
    path = fetch(name)
    card = get_card(name)
    cached = os.path.join(ditta_home(), "models", card.name, card.weights["file"])
    if os.path.abspath(path) != os.path.abspath(cached):
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        shutil.copyfile(path, cached)
    return cached
