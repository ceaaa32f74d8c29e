"""Runtime backends for the frozen streaming model, one interface:

    backend.step(frame uint8 [H, W, 3], state | None) -> (labels [H, W], confidence [H, W], state)

* ``torch``: :class:`~ditta_ros.streaming.StreamingDiTTA` on CPU or CUDA;
* ``tensorrt``: a TensorRT engine built from the exported ONNX (fp16, engine and
  timing cache, refit; :mod:`.tensorrt`, not run here), else onnxruntime's
  TensorRT execution provider (fp16 + engine cache);
* ``openvino``: the exported ONNX compiled by OpenVINO for a CPU, integrated GPU
  or NPU (:mod:`.openvino`; the fast path on CPU-only robots);
* ``onnxruntime``: the exported ONNX on the CUDA execution provider when present,
  else the CPU one;

:func:`select_backend` walks the fallback chain tensorrt -> openvino ->
onnxruntime -> torch and logs which backend it chose and why the others were
skipped.
"""

from __future__ import annotations

import logging
from typing import List, Optional

import numpy as np

log = logging.getLogger("ditta.runtime")

CHAIN = ("tensorrt", "openvino", "onnxruntime", "torch")
#: where exports are cached when no folder is given (the node's ``export_dir`` default)
DEFAULT_EXPORT_DIR = "~/.cache/ditta/export"


def available_ort_providers() -> List[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


def accelerated_runtime_available() -> bool:
    """True when a runtime faster than torch for the exported model exists here: the
    ``tensorrt`` or ``openvino`` package, or onnxruntime's CUDA / TensorRT execution
    provider. Without one, ``select_backend("auto", ...)`` ends on torch, so exporting
    first is wasted work."""
    from .openvino import openvino_devices

    if openvino_devices():
        return True
    if any(p in available_ort_providers() for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider")):
        return True
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


def _metadata_fp16(onnx_path: Optional[str]) -> bool:
    import json
    import os

    meta = os.path.splitext(onnx_path)[0] + ".json" if onnx_path else ""
    if not meta or not os.path.isfile(meta):
        return False
    with open(meta) as f:
        return json.load(f).get("precision") == "fp16"


def select_backend(requested: str = "auto", onnx_path: Optional[str] = None, torch_model=None,
                   engine_cache: Optional[str] = None, fp16: Optional[bool] = None,
                   openvino_device: str = "CPU", openvino_precision: str = "auto"):
    """The first usable backend of the chain starting at ``requested``.

    ``tensorrt`` tries the direct TensorRT engine (:mod:`.tensorrt`), then
    onnxruntime's TensorRT execution provider; ``openvino`` compiles the ONNX for
    ``openvino_device``; ``onnxruntime`` uses the CUDA EP
    when present, else the CPU; ``torch`` runs the streaming model itself. With
    ``auto`` on a machine whose onnxruntime has only the CPU EP, torch is chosen
    over onnxruntime when a torch model is given (faster there, measured in
    ``bench/streaming_speed.py``); ask for ``onnxruntime`` to get it anyway.

    Args:
        requested: ``auto`` | ``tensorrt`` | ``openvino`` | ``onnxruntime`` | ``torch``.
        onnx_path: exported model (needed by tensorrt/openvino/onnxruntime).
        torch_model: a :class:`StreamingDiTTA` (needed by torch), or a zero-argument
            callable returning one (built only when the chain reaches torch).
        engine_cache: TensorRT engine + timing cache folder; OpenVINO's compiled-model
            cache goes to its ``openvino`` subfolder.
        fp16: half precision where the backend supports it (TensorRT, torch on CUDA);
            ``None`` follows the export metadata's ``precision``.
        openvino_device: ``CPU`` | ``GPU`` | ``NPU`` (OpenVINO device name).
        openvino_precision: ``auto`` (the device's default: bf16 on CPUs with bf16 units) |
            ``f32`` | ``bf16`` | ``f16`` (:class:`~.openvino.OpenVINOBackend`).

    Raises:
        ValueError: unknown ``requested``.
        RuntimeError: nothing in the chain is usable (lists why for each).
    """
    if requested not in ("auto",) + CHAIN:
        raise ValueError(f"unknown backend {requested!r}; choose auto, {', '.join(CHAIN)}")
    fp16 = _metadata_fp16(onnx_path) if fp16 is None else bool(fp16)
    chain = CHAIN if requested == "auto" else CHAIN[CHAIN.index(requested):]
    reasons = []
    for name in chain:
        backend = None
        if name == "tensorrt":
            if onnx_path is None:
                reasons.append("tensorrt: no ONNX model")
                continue
            try:
                from .tensorrt import TensorRTBackend

                backend = TensorRTBackend(onnx_path, engine_cache, fp16)
            except RuntimeError as exc:
                reasons.append(f"tensorrt: {exc}")
            if backend is None:
                if "TensorrtExecutionProvider" not in available_ort_providers():
                    reasons.append("tensorrt (onnxruntime EP): onnxruntime has no TensorrtExecutionProvider here")
                    continue
                from .ort import OrtBackend

                backend = OrtBackend(onnx_path, prefer=("TensorrtExecutionProvider",), engine_cache=engine_cache,
                                     fp16=fp16)
        elif name == "openvino":
            if onnx_path is None:
                reasons.append("openvino: no ONNX model")
                continue
            try:
                from .openvino import OpenVINOBackend

                backend = OpenVINOBackend(onnx_path, openvino_device, engine_cache, precision=openvino_precision)
            except RuntimeError as exc:
                reasons.append(f"openvino: {exc}")
                continue
        elif name == "onnxruntime":
            if onnx_path is None:
                reasons.append("onnxruntime: no ONNX model")
                continue
            if (requested == "auto" and torch_model is not None
                    and "CUDAExecutionProvider" not in available_ort_providers()):
                # measured: the add-on's windowed attention runs ~3x slower in onnxruntime's CPU EP than in
                # torch (bench/results/streaming_speed.md), so auto prefers torch on CPU-only machines
                reasons.append("onnxruntime: CPU execution provider only (torch is faster on the CPU)")
                continue
            from .ort import OrtBackend

            backend = OrtBackend(onnx_path, prefer=("CUDAExecutionProvider",))
        else:
            if torch_model is None:
                reasons.append("torch: no torch model")
                continue
            from .torch_backend import TorchBackend

            # a factory, or the model itself (a module is callable too: it has ``step``)
            backend = TorchBackend(torch_model() if callable(torch_model) and not hasattr(torch_model, "step")
                                   else torch_model, fp16=fp16)
        log.info("runtime backend: %s (%s)%s", name, backend.describe(),
                 "; skipped " + "; ".join(reasons) if reasons else "")
        return backend
    raise RuntimeError("no usable runtime backend: " + "; ".join(reasons))


def weights_digest(net, plain: bool = False) -> str:
    """16 hex digits of sha256 over a network's ``state_dict`` (names, shapes, bytes):
    the key of a cached export (same weights -> same graph). ``plain``: only the ISS
    weights (what a ``tau = 0`` graph holds), so a network whose add-on alone was adapted
    shares the pre-trained model's plain graph."""
    import hashlib

    h = hashlib.sha256()
    for name, t in net.state_dict().items():
        if plain and not name.startswith("iss."):
            continue
        a = t.detach().cpu().contiguous()
        h.update(f"{name}{tuple(a.shape)}{a.dtype}".encode())
        h.update(np.ascontiguousarray(a.float().numpy() if a.is_floating_point() else a.numpy()).tobytes())
    return h.hexdigest()[:16]


def streaming_backend(net, frame_hw, tau: float, requested: str = "auto", export_dir: Optional[str] = None,
                      name: Optional[str] = None, engine_cache: Optional[str] = None, fp16: bool = False,
                      openvino_device: str = "CPU", label_set: str = "", classes=(), fusion: str = "frame",
                      openvino_precision: str = "auto", refit=None, refit_lock=None):
    """The runtime backend that serves a (pre-trained or adapted) network on frames of
    ``frame_hw``: one construction for the node, ``ditta eval --backend`` and the benchmarks.

    The exported ONNX lives in ``<export_dir>/<name>_<H>x<W>/`` as
    ``ditta_<name>_<H>x<W>_tau<tau>_<digest>.onnx`` where ``digest`` is
    :func:`weights_digest`: the plain ISS graph (``tau = 0``) of a model and frame size
    is exported once and reused across restarts; an adapted network gets its own file.
    No export is made when the chain ends on torch anyway (``auto`` without an
    accelerated runtime, or ``torch``).

    Args:
        net: :class:`~ditta_ros.adapt.DiTTANet` (not modified: the export copies it).
        frame_hw: ``(H, W)`` frame size in pixels.
        tau: fusion threshold (0 = plain ISS branch only).
        requested: as :func:`select_backend`.
        export_dir: export folder (``None``: :data:`DEFAULT_EXPORT_DIR`, the node's default).
        name: model name used in file names and metadata (default: the ISS model's
            ``info.name``, as :func:`ditta_ros.iss.load_model` attaches it).
        engine_cache, fp16, openvino_device, openvino_precision: as :func:`select_backend`
            (the torch backend runs channels-last on the CPU).
        label_set, classes: recorded in the export metadata.
        fusion: ``frame`` | ``grid`` (:class:`~ditta_ros.streaming.StreamingDiTTA`).
        refit: a backend serving the same model and frame size with other weights (a
            re-adaptation): when it can swap weights in place (TensorRT's refittable
            engines, ``swap_weights``) it is refitted from the new export and returned,
            instead of building a new engine. The export runs first; only the swap holds
            ``refit_lock`` (the serving thread's step lock). A failed refit marks ``refit``
            unusable (``unusable`` attribute: TensorRT may have swapped part of the
            weights) and a new engine is built.
        refit_lock: a lock held around ``swap_weights`` (``None``: none).

    Returns:
        a backend with ``step(frame, state) -> (labels, confidence, state)`` and ``describe()``.

    Raises:
        ValueError / RuntimeError: as :func:`select_backend`.
    """
    import os

    if requested not in ("auto",) + CHAIN:
        raise ValueError(f"unknown backend {requested!r}; choose auto, {', '.join(CHAIN)}")
    frame_hw = (int(frame_hw[0]), int(frame_hw[1]))
    name = name or getattr(getattr(net.iss, "info", None), "name", None) or "model"
    engine_root = engine_cache
    if engine_cache:  # engines, like exports, in one folder per model and frame size
        engine_cache = os.path.join(engine_cache, f"{name}_{frame_hw[0]}x{frame_hw[1]}")
    onnx_path = None
    if requested != "torch" and (requested != "auto" or accelerated_runtime_available()):
        onnx_path = _cached_export(net, frame_hw, tau, os.path.expanduser(export_dir or DEFAULT_EXPORT_DIR), name,
                                   fp16, fusion, label_set, classes)

    if refit is not None and onnx_path is not None and _same_graph(refit, onnx_path, frame_hw):
        import contextlib

        from .tensorrt import RefitRefused

        try:
            with refit_lock if refit_lock is not None else contextlib.nullcontext():
                refit.swap_weights(onnx_path)
            log.info("refitted the %s engine with the weights of %s", getattr(refit, "name", "runtime"), onnx_path)
            return refit
        except RefitRefused as exc:  # the engine is untouched and keeps serving
            log.warning("the engine refused the new weights (%s): building a new one", exc)
        except Exception as exc:
            refit.unusable = f"refit failed: {exc}"
            log.warning("refitting the engine failed (%s): building a new one", exc)

    def torch_model():  # built only when the chain reaches torch (its construction runs the network once)
        from ..streaming import StreamingDiTTA

        return StreamingDiTTA(net, frame_hw, tau, fusion=fusion)

    backend = select_backend(requested, onnx_path=onnx_path, torch_model=torch_model, engine_cache=engine_cache,
                             fp16=fp16, openvino_device=openvino_device, openvino_precision=openvino_precision)
    if engine_cache and os.path.isdir(engine_cache):
        _prune_exports(engine_cache, KEEP_EXPORTS)
        if os.path.isdir(os.path.join(engine_cache, "openvino")):
            _prune_exports(os.path.join(engine_cache, "openvino"), 2 * KEEP_EXPORTS, patterns=("*.blob",))
    if tau > 0 and getattr(backend, "name", None) in ("openvino", "onnxruntime"):
        # a second, plain graph for the frames where no pixel may use the previous one
        plain = streaming_backend(net, frame_hw, 0.0, backend.name, export_dir=export_dir, name=name,
                                  engine_cache=engine_root, fp16=fp16, openvino_device=openvino_device,
                                  label_set=label_set, classes=classes, openvino_precision=openvino_precision)
        backend = SkipAddon(backend, plain)
    return backend


def _cached_export(net, frame_hw, tau, export_dir, name, fp16, fusion, label_set, classes) -> str:
    """The ONNX of ``net`` for :func:`streaming_backend`: reused when the file for these weights,
    size, tau, fusion and precision exists, else exported and renamed into place (a crash
    mid-export never leaves a half-written model behind)."""
    import json
    import os
    import tempfile

    from ..export import EXPORT_FORMAT, export_onnx

    folder = os.path.join(export_dir, f"{name}_{frame_hw[0]}x{frame_hw[1]}")
    digest = weights_digest(net, plain=tau <= 0)
    stem = f"ditta_{name}_{frame_hw[0]}x{frame_hw[1]}_tau{tau:g}{'_grid' if tau > 0 and fusion == 'grid' else ''}" \
           f"_{digest}"
    onnx_path, meta_path = (os.path.join(folder, stem + ext) for ext in (".onnx", ".json"))
    if os.path.isfile(onnx_path) and os.path.isfile(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if meta["adaptation"].get("weights_digest") == digest and meta["precision"] == ("fp16" if fp16 else "fp32") \
                and meta.get("format") == EXPORT_FORMAT:
            log.info("reusing the export %s", onnx_path)
            os.utime(onnx_path)  # recently used: kept by the pruning
            return onnx_path
        log.info("the export %s is of another version or precision: exporting again", onnx_path)
    os.makedirs(folder, exist_ok=True)
    _remove_stale_temporaries(folder)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=folder)
    path, meta_tmp = export_onnx(net, frame_hw, tmp, name, label_set=label_set, classes=classes, tau=tau, fp16=fp16,
                                 adaptation={"weights_digest": digest}, fusion=fusion)
    os.replace(path, onnx_path)
    os.replace(meta_tmp, meta_path)
    os.rmdir(tmp)
    _prune_exports(folder, keep=KEEP_EXPORTS)
    return onnx_path


#: exports kept per model and frame size folder: the most recently used (a reuse touches the file)
KEEP_EXPORTS = 8


def _same_graph(backend, onnx_path: str, frame_hw) -> bool:
    """True when ``backend`` can take the weights of ``onnx_path`` in place: it can swap
    weights, serves the same frame size and, where it knows its export's metadata, the same
    tau, fusion and precision."""
    import json

    if not hasattr(backend, "swap_weights") or tuple(getattr(backend, "frame_hw", ())) != tuple(frame_hw):
        return False
    meta = getattr(backend, "meta", None)
    if not isinstance(meta, dict):
        return True
    with open(onnx_path[:-len(".onnx")] + ".json") as f:
        new = json.load(f)
    return all(meta.get(k) == new.get(k) for k in ("tau", "fusion", "precision", "frame_hw"))


def _prune_exports(folder: str, keep: int, patterns=("ditta_*_tau0_*.onnx", "ditta_*.onnx", "*.engine")) -> None:
    """Remove all but the ``keep`` most recently used files of each kind in ``folder`` (plain
    ``tau = 0`` graphs, the other exports, TensorRT engines, OpenVINO blobs): one folder per
    model and frame size must not fill the disk with every re-adaptation. A reuse touches
    the file; a pruned graph still loaded keeps serving and is exported again at the next start."""
    import fnmatch
    import glob
    import os

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


def _remove_stale_temporaries(folder: str, age_s: float = 3600.0) -> None:
    """Remove ``.export-*`` folders older than ``age_s`` (an export killed mid-way; a younger one
    may belong to another process still exporting)."""
    import glob
    import os
    import shutil
    import time

    for tmp in glob.glob(os.path.join(folder, ".export-*")):
        try:
            if time.time() - os.path.getmtime(tmp) > age_s:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


class SkipAddon:
    """A streaming backend that runs the plain graph (``tau = 0``, no add-on) whenever no
    pixel of the state may use the previous frame (``has_prev`` all 0: a stream's first
    frame, frames farther apart than ``max_gap``), and the full graph otherwise. The
    result is the same (the fusion keeps the plain branch wherever ``has_prev = 0``); the
    add-on's cost is only paid when it can change a label. Same interface as the backends."""

    def __init__(self, full, plain):
        self.full, self.plain = full, plain
        self.frame_hw = full.frame_hw

    def describe(self) -> str:
        """The full graph's description."""
        return self.full.describe()

    def initial_state(self):
        """The full graph's zero state."""
        return self.full.initial_state()

    def step(self, frame, state=None):
        """As the wrapped backends' ``step``."""
        if state is None or float(state[-1].max()) <= 0.5:
            if frame.dtype != np.uint8 or frame.shape != (*self.frame_hw, 3):
                return self.full.step(frame, state)  # the full graph raises the usual ValueError
            return self.plain.step(frame, None)
        return self.full.step(frame, state)

