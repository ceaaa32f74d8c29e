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
* The graph is read by :func:`read_graph`, which gives every PReLU slope its input's rank: the same
  values; the layout reorders around them took half of the CPU inference time in f32, a tenth after
  (:func:`channel_slopes`).
* Compiled-model cache: ``<engine_cache>/openvino/<export stem>`` (OpenVINO's ``CACHE_DIR``: a
  blob per model content, device and configuration, the analogue of the TensorRT
  engine key), so a restart with the same export skips compilation. A blob OpenVINO cannot
  import clears the cache and the model is compiled anew (:func:`clear_cache`).
"""

from __future__ import annotations

import logging
import os
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

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


def channel_slopes(model) -> int:
    """Give every PReLU of ``model`` (an ``openvino.Model``, changed in place) whose slope is a constant one
    rank short of its input -- ``[C, 1, 1]`` for an ``[N, C, H, W]`` input, as ``torch.onnx`` exports
    ``nn.PReLU(C)`` -- the slope ``[1, C, 1, 1]``: the same values and broadcast. The graph computes the same
    operations in another memory layout: on the default model every output was bit-identical on every frame
    measured (``bench/results/prelu_slopes*.md``, f32 and bf16); in general a kernel may sum in another order
    (f32: labels identical, confidence within rounding; ``test/test_streaming.py``).

    Why: OpenVINO's CPU plugin fuses a BatchNorm and the PReLU after it into one generated kernel (a snippet,
    ``Subgraph``) that takes channels-last tensors only when all its inputs have one rank (OpenVINO 2026.4);
    with the short slope it runs channels-first, between convolutions that run channels-last, and each such
    node is fenced by two layout reorders. In ``espnetv2-s2.0-cityscapes-1024x512`` at 480x360 they took half
    of the f32 inference time: 1.9-2.2x faster with the slopes fixed in f32, 1.2x in bf16
    (``bench/results/prelu_slopes*.md``).

    Returns:
        how many slopes were replaced (0: nothing to do; never raises on other graphs).
    """
    import openvino as ov

    changed = 0
    for node in model.get_ordered_ops():
        if node.get_type_name() != "PRelu":
            continue
        slope = node.input_value(1).get_node()
        x_rank = node.input_value(0).get_partial_shape().rank
        if slope.get_type_name() != "Constant" or x_rank.is_dynamic or \
                slope.get_element_type() not in (ov.Type.f32, ov.Type.f16):  # get_data() reads bf16 bits as f16
            continue
        values = slope.get_data()
        if values.ndim < 2 or values.ndim != x_rank.get_length() - 1:  # a scalar or 1-D (per-channel) slope: as is
            continue
        new = ov.opset13.constant(values.reshape((1,) + values.shape), dtype=slope.get_element_type())
        node.input(1).replace_source_output(new.output(0))
        changed += 1
    if changed:
        model.validate_nodes_and_infer_types()
    return changed


def read_graph(core, onnx_path: str):
    """``onnx_path`` read by ``core`` (an ``openvino.Core``) as an ``openvino.Model``, with
    :func:`channel_slopes` applied: what every OpenVINO backend compiles (and the benchmarks that measure it).

    Raises:
        RuntimeError: OpenVINO cannot read the file.
    """
    model = core.read_model(onnx_path)
    channel_slopes(model)
    return model


def _latency(hint: Dict[str, str], device: str, threads: int) -> Dict[str, object]:
    """A one-request (LATENCY hint) compile configuration with the precision ``hint`` (:func:`precision_config`)
    and, on a CPU, ``threads`` inference threads (0: OpenVINO's choice, all cores)."""
    config = {"PERFORMANCE_HINT": "LATENCY", **hint}
    if device.startswith("CPU") and threads > 0:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


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
        self._open(onnx_path, device, cache_dir)
        self._serve(self._compile(read_graph(self._core, onnx_path), _latency(hint, device, threads)), precision)

    def _serve(self, compiled, precision: str) -> None:
        """Make ``compiled`` the model :meth:`_infer` runs (one request) and record the precision it runs in."""
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.precision = compiled_precision(compiled, precision)  # what the device actually runs in
        self._inputs = [i.get_any_name() for i in compiled.inputs]
        self._outputs = [o.get_any_name() for o in compiled.outputs]

    def _infer(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """The served model's outputs by name for ``feed`` (the inputs it has; extra keys are ignored)."""
        res = self.request.infer({k: feed[k] for k in self._inputs})
        return {name: res[o] for name, o in zip(self._outputs, self.compiled.outputs)}

    def _open(self, onnx_path: str, device: str, cache_dir: Optional[str]) -> None:
        """Read the metadata, check the device, point OpenVINO's compiled-model cache at this graph's folder."""
        try:
            import openvino as ov
        except ImportError as exc:
            raise RuntimeError("the Python package 'openvino' is not installed (`pip install openvino`)") from exc
        ExportedGraph.__init__(self, onnx_path)
        self._core = core = ov.Core()
        present = core.available_devices
        if device != "AUTO" and not any(d == device or d.startswith(device + ".") or device.startswith(d)
                                        for d in present):
            raise RuntimeError(f"OpenVINO device {device!r} not present; available: {', '.join(present) or 'none'}")
        self._cache = None
        if cache_dir:  # one folder per exported graph: clearing it touches no other model's blobs
            stem = os.path.splitext(os.path.basename(onnx_path))[0]
            self._cache = os.path.join(os.path.expanduser(cache_dir), "openvino", stem)
            os.makedirs(self._cache, exist_ok=True)
            os.utime(self._cache)  # recently used: kept by prune_cache
            core.set_property({"CACHE_DIR": self._cache})
        self.device = device

    def _compile(self, model, config: Dict[str, object]):
        """``model`` (a path or an ``openvino.Model``) compiled for :attr:`device` with ``config``."""
        try:
            return self._core.compile_model(model, self.device, config)
        except RuntimeError as exc:
            if not self._cache:
                raise
            # a cached blob OpenVINO cannot import (a corrupt file, a crash while it was written): drop this
            # graph's blobs and compile anew, which writes a fresh one; a second failure is not the cache's
            log.warning("OpenVINO could not use its compiled-model cache %s (%s): compiling anew", self._cache,
                        str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            clear_cache(self._cache)
            return self._core.compile_model(model, self.device, config)

    def describe(self) -> str:
        """One line for logs: device, precision and the model."""
        return f"openvino {self.device} {self.precision}, {self._model_name()}"

    def _run(self, feed):
        # a tau = 0 export (plain ISS branch) has no use for the state inputs; the exporter drops them
        out = self._infer(feed)
        return out["labels"], out["confidence"], out["feat"], out["logits"]


def auto_streams() -> int:
    """The streams ``openvino_streams: 0`` means: the outcome of the rule of ``bench/pipeline_speed.py`` (fixed
    before its runs: >= 1.3x the frames/s with a core busy, >= 0.95x quiet, latency alone <= 1.2x, labels
    identical) on the CPUs measured, whatever the device, precision and threads. Today 1 everywhere:
    since :func:`read_graph` cut the layout reorders' time, the rule passes on no CPU measured (AVX2 kernels, f32:
    1.26x busy, 1.03x quiet, 1.13x latency; ``bench/results/pipeline_speed_onednn-avx2.md``). Before, it passed
    there (1.35x) and ``0`` gave 2 streams on CPUs running f32; it never passed with bf16 units (0.93x quiet).
    Two streams stay available as ``openvino_streams: 2``."""
    return 1


def split_graph(model):
    """``(stateless, fusion)`` cut from an ``openvino.Model`` of an export made with ``plain_logits=True``
    (:func:`ditta_ros.export.export_onnx`) and ``fusion="flow"``, by graph surgery where the ISS logits leave
    the classifier, so both parts compute exactly what the whole graph does (the other fusions' temporal
    branches take the current frame's features or the previous state: OpenVINO refuses their cut). ``stateless``: ``image`` -> ``plain_logits``,
    ``feat``, ``logits`` (the next state; nothing from the previous frame); ``fusion``: a ``plain_logits``
    parameter and the export's state inputs -> ``labels``, ``confidence``.

    Raises:
        KeyError: the graph has no ``plain_logits`` output (exported without it).
    """
    import openvino as ov

    def parts(m):
        results = {o.get_any_name(): r for o, r in zip(m.outputs, m.get_results())}
        return results, {p.get_friendly_name(): p for p in m.get_parameters()}

    results, params = parts(model)
    stateless = ov.Model([results["plain_logits"], results["feat"], results["logits"]], [params["image"]],
                         "stateless")
    rest = model.clone()  # rewired below; the stateless part keeps the original nodes
    results, params = parts(rest)
    src = results["plain_logits"].input_value(0)
    while src.get_node().get_type_name() == "Identity":  # the export's copy when plain_logits is the state too
        src = src.get_node().input_value(0)
    cut = ov.opset13.parameter(src.get_partial_shape(), src.get_element_type(), name="plain_logits")
    for target in list(src.get_target_inputs()):
        if target.get_node().get_type_name() != "Result":
            target.replace_source_output(cut.output(0))
    fusion = ov.Model([results["labels"], results["confidence"]],
                      [cut] + [p for n, p in params.items() if n != "image"], "fusion")
    return stateless, fusion


class PipelinedOpenVINO(OpenVINOBackend):
    """An exported DiTTA graph run as a pipeline of two parts (issue 20, item 1): the stateless part
    (backbone, decoder, classifier: :func:`split_graph`) on ``streams`` OpenVINO streams, so that the next
    frame's part runs while this frame is fused, and the fusion part (the temporal branch and Eq. 3, needing
    the previous frame's state) in frame order. Labels equal the whole graph's (the same operations cut in
    two; ``bench/streams_probe.py``, ``test/test_streaming.py``).

    Use: :meth:`start` a frame (its stateless part starts at once), later :meth:`finish` it with the state
    it gets (warped, gated: :class:`~ditta_ros.runtime.serving.FrozenDiTTA`), in frame order; at most
    ``streams`` frames started and not finished. A frame started but never finished is dropped when its
    request is reused. :meth:`step` serves a frame alone (nothing to overlap it with: a camera slower than
    the node) on a second compilation of the stateless part with the LATENCY hint, all cores on that one
    frame, as :class:`OpenVINOBackend` does (one stream's one thread would take ~1.7x longer).

    Args:
        onnx_path: an export made with ``plain_logits=True`` (its metadata lists the extra output).
        device, cache_dir, precision: as :class:`OpenVINOBackend`.
        streams: OpenVINO streams of the stateless part (>= 2; THROUGHPUT hint, one thread each on a
            CPU with as many cores); the fusion part is one request with the LATENCY hint.
        threads: inference threads of the fusion part and of a frame served alone (0: all cores).

    Raises:
        ValueError: ``streams`` < 2, an unknown ``precision``, or an export without ``plain_logits``.
        RuntimeError, FileNotFoundError: as :class:`OpenVINOBackend`.
    """

    def __init__(self, onnx_path: str, device: str = "CPU", cache_dir: Optional[str] = None,
                 precision: str = "auto", streams: int = 2, threads: int = 0):
        if int(streams) < 2:
            raise ValueError(f"a pipeline needs at least 2 streams, got {streams}")
        hint = precision_config(precision, device)
        self._open(onnx_path, device, cache_dir)
        if "plain_logits" not in self.meta.get("extra_outputs", {}):
            raise ValueError(f"{onnx_path} was exported without the plain_logits output a pipeline needs")
        stateless, fusion = split_graph(read_graph(self._core, onnx_path))
        self.stateless = self._compile(stateless, {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": str(int(streams)),
                                                   **hint})
        latency = _latency(hint, device, threads)
        self.solo = self._compile(stateless, latency)
        self._solo = self.solo.create_infer_request()
        self._serve(self._compile(fusion, latency), precision)
        self.streams = int(streams)
        self._requests = [self.stateless.create_infer_request() for _ in range(self.streams)]
        self._uses = [0] * self.streams
        self._next = 0

    def describe(self) -> str:
        """One line for logs: device, precision, the pipeline and the model."""
        return f"openvino {self.device} {self.precision} ({self.streams} streams, pipelined), {self._model_name()}"

    def start(self, frame: np.ndarray) -> Tuple[int, int]:
        """Start the stateless part of ``frame`` (uint8 ``[H, W, 3]`` RGB, the export's size) on the next
        stream; returns the handle :meth:`finish` takes. Raises ``ValueError`` for a bad frame."""
        self.check_frame(frame)
        k = self._next
        self._next = (k + 1) % self.streams
        request = self._requests[k]
        try:
            request.wait()  # a frame started on this request and never finished: dropped
        except RuntimeError as exc:  # its inference failed; nobody takes its result
            log.debug("a dropped frame's inference had failed: %s", exc)
        self._uses[k] += 1
        request.start_async({"image": np.ascontiguousarray(frame)})
        return k, self._uses[k]

    def finish(self, handle: Tuple[int, int], state=None):
        """``(labels int64 [H, W], confidence float32 [H, W], next state)`` of the frame ``handle`` started,
        fused with ``state`` (``None``: a stream's first frame, the plain branch).

        Raises:
            RuntimeError: ``handle``'s request was reused by later :meth:`start` s (finished out of order).
        """
        k, use = handle
        if self._uses[k] != use:
            raise RuntimeError("this frame's request was reused before it was finished: finish in frame order")
        request = self._requests[k]
        request.wait()
        return self._fuse(request, state)

    def warm_streams(self, frame: np.ndarray) -> None:
        """One inference of ``frame`` on each stream (their first inferences are the slower ones:
        :meth:`~ditta_ros.runtime.serving.FrozenDiTTA.warm`); the outputs are dropped."""
        for _ in range(self.streams):
            self.finish(self.start(frame), None)

    def step(self, frame: np.ndarray, state=None):
        """One frame alone (the LATENCY compilation of the stateless part, then the fusion part):
        ``(labels, confidence, next state)``, what :meth:`start` and :meth:`finish` give. Raises
        ``ValueError`` for a bad frame."""
        self.check_frame(frame)
        self._solo.infer({"image": np.ascontiguousarray(frame)})
        return self._fuse(self._solo, state)

    def _fuse(self, request, state):
        """The fusion part on ``request``'s stateless outputs and ``state``."""
        plain, feat, logits = (np.array(request.get_tensor(n).data) for n in ("plain_logits", "feat", "logits"))
        out = self._infer({"plain_logits": plain, **self.state_feed(state)})
        return out["labels"], out["confidence"], (feat, logits, self._ones)
