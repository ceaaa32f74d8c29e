"""OpenVINO backend for an exported streaming model (see :mod:`ditta_ros.export`).

Intel's runtime for CPUs, integrated GPUs and NPUs; on a CPU it runs the exported
graph 1.5-2.8x faster than torch and far better than onnxruntime's CPU provider
(``bench/results/streaming_speed.md``), and it degrades least when the cores are
shared with the rest of the robot's software.

* The ONNX is read and compiled by ``openvino.Core`` for ``device`` (``CPU`` by
  default, ``GPU`` or ``NPU`` where present), with the ``LATENCY`` performance
  hint (one frame at a time, all granted cores on it).
* Precision (``precision``): ``auto`` (default) is OpenVINO's own choice for the
  device: bf16 on CPUs with bf16/AMX units (~1.5x faster than f32 here; labels agree
  with torch's on 99.1-99.9 % of the pixels and the development set loses nothing:
  addendum 3 of ``docs/dev_set_rule.md``), f32 on other CPUs, f16 on GPU/NPU;
  ``f32`` gives torch's labels (>= 99.9 %, ``test/test_streaming.py``). Where
  ``ONEDNN_MAX_CPU_ISA`` caps the kernels below bf16 (an older CPU emulated on this one:
  :func:`bf16_capped`), ``auto`` on a CPU is f32.
* Compiled-model cache: ``<engine_cache>/openvino/<export stem>`` (OpenVINO's ``CACHE_DIR``: a
  blob per model content, device and configuration, the analogue of the TensorRT
  engine key), so a restart with the same export skips compilation. A blob OpenVINO cannot
  import clears the cache and the model is compiled anew (:func:`clear_cache`).
"""

from __future__ import annotations

import logging
import os
from typing import Dict, Mapping, Optional

from .exported import ExportedGraph

log = logging.getLogger("ditta.runtime")

PRECISIONS = ("auto", "f32", "bf16", "f16")


def compiled_precision(compiled, default: str = "auto") -> str:
    """The inference precision a compiled OpenVINO model runs in (``bfloat16`` where the CPU has bf16 units,
    else ``float32``; OpenVINO's ``INFERENCE_PRECISION_HINT`` as a plain name), or ``default`` where the device
    does not report it."""
    try:
        return str(compiled.get_property("INFERENCE_PRECISION_HINT")).replace("<Type: '", "").rstrip("'>")
    except RuntimeError:
        return default


def clear_cache(cache: str) -> None:
    """Remove the files in ``cache``, one exported graph's folder: OpenVINO's compiled blobs and their
    temporaries."""
    import glob

    for path in glob.glob(os.path.join(cache, "*")):
        if os.path.isfile(path):
            try:
                os.remove(path)
            except OSError:
                pass


def prune_cache(root: str, keep: int) -> None:
    """Keep the ``keep`` most recently used per-graph folders of the compiled-model cache ``root``
    (``<engine_cache>/openvino``; a backend touches its folder when it loads), remove the others and any
    blob left directly in ``root`` by an older version."""
    import shutil

    entries = [os.path.join(root, n) for n in os.listdir(root)] if os.path.isdir(root) else []
    for path in entries:
        if os.path.isfile(path) and path.endswith(".blob"):
            os.remove(path)
    folders = sorted((p for p in entries if os.path.isdir(p)), key=os.path.getmtime, reverse=True)
    for path in folders[keep:]:
        shutil.rmtree(path, ignore_errors=True)
        log.info("removed the old OpenVINO cache %s", path)


def openvino_devices():
    """Devices OpenVINO sees here (``[]`` when the package is missing)."""
    try:
        import openvino as ov
    except ImportError:
        return []
    return list(ov.Core().available_devices)


#: ``ONEDNN_MAX_CPU_ISA`` values below ``AVX512_CORE_BF16``: oneDNN then has no bf16 kernels
_BELOW_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")


def bf16_capped(environ: Optional[Mapping[str, str]] = None) -> bool:
    """True when ``ONEDNN_MAX_CPU_ISA`` caps oneDNN below its bf16 kernels (``AVX2``, ``AVX512_CORE``, ...;
    case-insensitive). OpenVINO's ``auto`` precision reads the CPU's own flags and picks bf16 on a CPU
    with bf16 units whatever the cap, and then fails to compile (OpenVINO 2026.4: "object is not
    initialized"); where this is True, f32 is what the capped CPU can run."""
    env = os.environ if environ is None else environ
    return env.get("ONEDNN_MAX_CPU_ISA", "").strip().upper() in _BELOW_BF16


def precision_config(precision: str = "auto", device: str = "CPU") -> Dict[str, str]:
    """The OpenVINO compile configuration for ``precision`` (one of :data:`PRECISIONS`): ``{}`` for ``auto``
    (the device's own choice), else ``{"INFERENCE_PRECISION_HINT": precision}``. On a CPU whose kernels
    ``ONEDNN_MAX_CPU_ISA`` caps below bf16 (:func:`bf16_capped`: an older CPU
    emulated on this one), ``auto`` is ``f32``: OpenVINO's own choice reads the CPU's flags, not the cap, and
    fails to compile in bf16 there (OpenVINO 2026.4).

    Raises:
        ValueError: ``precision`` not in :data:`PRECISIONS`.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"OpenVINO precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto" and device.startswith("CPU") and bf16_capped():
        log.info("ONEDNN_MAX_CPU_ISA=%s caps the CPU below bf16: OpenVINO runs f32", os.environ["ONEDNN_MAX_CPU_ISA"])
        precision = "f32"
    return {} if precision == "auto" else {"INFERENCE_PRECISION_HINT": precision}


class OpenVINOBackend(ExportedGraph):
    """Runs ``ditta_*.onnx`` with OpenVINO; state carried as numpy arrays.

    Args:
        onnx_path: the exported model; its metadata JSON must sit beside it.
        device: OpenVINO device name (``CPU``, ``GPU``, ``GPU.1``, ``NPU``, ``AUTO``).
        cache_dir: engine cache folder; compiled blobs go to ``<cache_dir>/openvino``.
        precision: ``auto`` (the device's default), ``f32``, ``bf16`` or ``f16``.
        threads: inference threads (0 = OpenVINO's choice, all cores).

    Raises:
        RuntimeError: the ``openvino`` package is missing or ``device`` is not present
            (the message lists the devices that are).
        ValueError: unknown ``precision``.
        FileNotFoundError: the ONNX or its metadata is missing.
    """

    name = "openvino"  #: the backend name of :data:`ditta_ros.runtime.CHAIN`

    def __init__(self, onnx_path: str, device: str = "CPU", cache_dir: Optional[str] = None,
                 precision: str = "auto", threads: int = 0):
        hint = precision_config(precision, device)  # checks precision before anything is loaded
        try:
            import openvino as ov
        except ImportError as exc:
            raise RuntimeError("the Python package 'openvino' is not installed (`pip install openvino`)") from exc
        super().__init__(onnx_path)
        core = ov.Core()
        present = core.available_devices
        if device != "AUTO" and not any(d == device or d.startswith(device + ".") or device.startswith(d)
                                        for d in present):
            raise RuntimeError(f"OpenVINO device {device!r} not present; available: {', '.join(present) or 'none'}")
        if cache_dir:  # one folder per exported graph: clearing it touches no other model's blobs
            stem = os.path.splitext(os.path.basename(onnx_path))[0]
            cache = os.path.join(os.path.expanduser(cache_dir), "openvino", stem)
            os.makedirs(cache, exist_ok=True)
            os.utime(cache)  # recently used: kept by prune_cache
            core.set_property({"CACHE_DIR": cache})
        config = {"PERFORMANCE_HINT": "LATENCY", **hint}
        if device.startswith("CPU") and threads > 0:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.device = device
        try:
            self.compiled = core.compile_model(onnx_path, device, config)
        except RuntimeError as exc:
            if not cache_dir:
                raise
            # a cached blob OpenVINO cannot import (a corrupt file, a crash while it was written): drop this
            # graph's blobs and compile anew, which writes a fresh one; a second failure is not the cache's
            log.warning("OpenVINO could not use its compiled-model cache %s (%s): compiling anew", cache,
                        str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            clear_cache(cache)
            self.compiled = core.compile_model(onnx_path, device, config)
        self.request = self.compiled.create_infer_request()
        self.precision = compiled_precision(self.compiled, precision)  # what the device actually runs in
        self._inputs = [i.get_any_name() for i in self.compiled.inputs]
        self._outputs = [o.get_any_name() for o in self.compiled.outputs]

    def describe(self) -> str:
        """One line for logs: device, precision and the model."""
        return f"openvino {self.device} {self.precision}, {self._model_name()}"

    def _run(self, feed):
        # a tau = 0 export (plain ISS branch) has no use for the state inputs; the exporter drops them
        res = self.request.infer({k: feed[k] for k in self._inputs})
        out = {name: res[o] for name, o in zip(self._outputs, self.compiled.outputs)}
        return out["labels"], out["confidence"], out["feat"], out["logits"]
