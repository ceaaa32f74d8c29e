"""The export cache: each (pre-trained or adapted) network is exported once per model, frame
size, tau, fusion and precision into ``<export_dir>/<model>_<H>x<W>/`` and reused across
restarts (:func:`cached_export`); old files are pruned by last use (:func:`prune_exports`).

File names: ``ditta_<model>_<H>x<W>_tau<tau>[_grid]_<digest>.onnx`` (+ ``.json`` metadata),
``digest`` = :func:`weights_digest`. A plain ISS graph (``tau = 0``) is keyed by the ISS weights
only, so a network whose add-on alone was adapted shares the pre-trained model's plain graph.
Every write goes to a temporary folder first and is renamed into place: a crash mid-export never
leaves a half-written model behind, and a failed write (a full disk) leaves the cached files as they
were. A cached graph whose bytes no longer match the sha256 its metadata recorded (a corrupt file)
is exported again.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time

import numpy as np

from ..export import EXPORT_FORMAT, export_onnx, sha256_file

log = logging.getLogger("ditta.runtime")

#: exports kept per model and frame size folder: the most recently used (a reuse touches the file)
KEEP_EXPORTS = 8


def weights_digest(net, plain: bool = False) -> str:
    """16 hex digits of sha256 over a network's ``state_dict`` (names, shapes, bytes):
    the key of a cached export (same weights -> same graph). ``plain``: only the ISS
    weights (what a ``tau = 0`` graph holds), so a network whose add-on alone was adapted
    shares the pre-trained model's plain graph."""
    h = hashlib.sha256()
    for name, t in net.state_dict().items():
        if plain and not name.startswith("iss."):
            continue
        a = t.detach().cpu().contiguous()
        h.update(f"{name}{tuple(a.shape)}{a.dtype}".encode())
        h.update(np.ascontiguousarray(a.float().numpy() if a.is_floating_point() else a.numpy()).tobytes())
    return h.hexdigest()[:16]


def cached_export(net, frame_hw, tau: float, export_dir: str, name: str, fp16: bool = False, fusion: str = "frame",
                  label_set: str = "", classes=(), plain_logits: bool = False, flow_grid: str = "addon") -> str:
    """The path of the ONNX of ``net`` for frames of ``frame_hw`` (module docstring): reused when
    the file for these weights, size, tau, fusion (and ``flow_grid``) and precision exists in ``export_dir``
    (expanded), else exported (:func:`ditta_ros.export.export_onnx`) and renamed into place.
    ``plain_logits``: with the extra output a pipelined backend cuts the graph at (its own file, ``_split``).

    Raises:
        OSError: the folder cannot be written; onnx.checker.ValidationError: an invalid graph.
    """
    export_dir = os.path.expanduser(export_dir)
    folder = os.path.join(export_dir, f"{name}_{frame_hw[0]}x{frame_hw[1]}")
    digest = weights_digest(net, plain=tau <= 0)
    stem = f"ditta_{name}_{frame_hw[0]}x{frame_hw[1]}_tau{tau:g}{'_' + fusion if tau > 0 and fusion != 'frame' else ''}" \
           f"{'_' + flow_grid + 'grid' if flow_grid != 'addon' else ''}" \
           f"{'_split' if plain_logits else ''}_{digest}"
    onnx_path, meta_path = (os.path.join(folder, stem + ext) for ext in (".onnx", ".json"))
    if os.path.isfile(onnx_path) and os.path.isfile(meta_path):
        try:
            with open(meta_path) as f:
                meta = json.load(f)
            meta["adaptation"], meta["precision"]
        except (ValueError, KeyError, TypeError) as exc:  # a corrupt metadata file: export again
            log.warning("the metadata of the cached export %s is unreadable (%s): exporting again", onnx_path, exc)
            meta = {"adaptation": {}, "precision": None}
        if meta["adaptation"].get("weights_digest") == digest and meta["precision"] == ("fp16" if fp16 else "fp32") \
                and meta.get("format") == EXPORT_FORMAT:
            if sha256_file(onnx_path) == meta.get("sha256"):
                log.info("reusing the export %s", onnx_path)
                os.utime(onnx_path)  # recently used: kept by the pruning
                return onnx_path
            log.warning("the cached export %s does not match its recorded sha256 (a corrupt file): exporting again",
                        onnx_path)
        else:
            log.info("the export %s is of another version or precision: exporting again", onnx_path)
    os.makedirs(folder, exist_ok=True)
    remove_stale_temporaries(folder)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=folder)
    try:
        path, meta_tmp = export_onnx(net, frame_hw, tmp, name, label_set=label_set, classes=classes, tau=tau,
                                     fp16=fp16, adaptation={"weights_digest": digest}, fusion=fusion,
                                     plain_logits=plain_logits, flow_grid=flow_grid)
        # the graph first, then its metadata: a crash between the two leaves a graph without a matching
        # sha256 in its metadata, which the check above exports again
        os.replace(path, onnx_path)
        os.replace(meta_tmp, meta_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    prune_exports(folder, keep=KEEP_EXPORTS)
    return onnx_path



def prune_exports(folder: str, keep: int, patterns=("ditta_*_tau0_*.onnx", "ditta_*.onnx", "*.engine")) -> None:
    """Remove all but the ``keep`` most recently used files of each kind in ``folder`` (plain
    ``tau = 0`` graphs, the other exports, TensorRT engines, OpenVINO blobs): one folder per
    model and frame size must not fill the disk with every re-adaptation. A reuse touches
    the file; a pruned graph still loaded keeps serving and is exported again at the next start."""
    for pattern in patterns:
        paths = glob.glob(os.path.join(folder, pattern))
        if pattern == "ditta_*.onnx":  # the plain graphs are counted on their own
            paths = [p for p in paths if not fnmatch.fnmatch(os.path.basename(p), "ditta_*_tau0_*.onnx")]
        paths.sort(key=os.path.getmtime, reverse=True)
        for path in paths[keep:]:
            for p in (path, path[:-len(".onnx")] + ".json" if path.endswith(".onnx") else None):
                try:
                    if p:
                        os.remove(p)
                except OSError:
                    pass
            log.info("removed the old export %s", path)


def remove_stale_temporaries(folder: str, age_s: float = 3600.0) -> None:
    """Remove ``.export-*`` folders older than ``age_s`` (an export killed mid-way; a younger one
    may belong to another process still exporting)."""
    for tmp in glob.glob(os.path.join(folder, ".export-*")):
        try:
            if time.time() - os.path.getmtime(tmp) > age_s:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass
