"""Export of the frozen streaming model (:class:`~ditta_ros.streaming.StreamingDiTTA`) to ONNX
(adapted weights are saved and loaded by :mod:`ditta_ros.checkpoint`; exports are cached per
model, frame size and weights by :mod:`ditta_ros.runtime.export_cache`).

``export_onnx`` writes ``<out>/ditta_<model>_<H>x<W>.onnx`` (legacy TorchScript
exporter, opset 18: LayerNormalization stays one op and ``Resize`` has the
``antialias`` attribute the PIL-like input resize needs; weights embedded) and a
metadata JSON beside it: model, family, label set and classes, frame and network
input size, normalisation, tau, the input/output names and shapes, adaptation
info and the ONNX file's sha256. ``onnx.checker`` validates the graph.

Graph interface (one call per frame, the state outputs feed the next call):

=============  =========  ===============================================
name           dtype      shape
=============  =========  ===============================================
image          uint8      [H, W, 3] RGB
feat_prev      float32    [1, D, gh, gw] previous frame's decoder features on the add-on grid
logits_prev    float32    [1, C, gh, gw] previous frame's plain logits on the add-on grid (a flow fusion
                          with ``flow_grid="model"``: on the model's own grid, ``[1, C, h, w]``)
has_prev       float32    [H, W] 1 where the previous frame may be used (0 on the first
                          frame of a stream; the motion gate's mask)
labels         int64      [H, W] class ids of the model's label set
confidence     float32    [H, W] Eq. 2 reliability, 0..1
feat, logits   float32    the next state
=============  =========  ===============================================
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from typing import Dict, Optional, Tuple

import torch

from .adapt import DiTTANet
from .addon import DEFAULT_TAU
from .streaming import StreamingDiTTA

INPUT_NAMES = ["image", "feat_prev", "logits_prev", "has_prev"]
OUTPUT_NAMES = ["labels", "confidence", "feat", "logits"]
DEFAULT_OPSET = 18
#: version of the graph interface and of what the graph computes; a cached export of another
#: version is exported again (version 2 carried the state on the decoder grid, 3 on the add-on
#: grid; 4 keeps a NaN entropy NaN in the reliability instead of reporting 1; 5: the ``bayes`` fusion keeps Eq. 3's
#: ``tau`` gate, docs/dev_set_rule.md addendum 15)
EXPORT_FORMAT = 5


def _resize_antialias_symbolic(g, x, output_size, align_corners, scale_factors):
    """ONNX for ``aten::_upsample_bilinear2d_aa`` (torch's antialiased bilinear
    resize, which the legacy exporter lacks): ``Resize`` linear, ``half_pixel``,
    ``antialias=1``, ``exclude_outside=1`` -- equal to torch's result to ~1e-2 grey
    levels in onnxruntime (``test/test_streaming.py``)."""
    from torch.onnx import symbolic_helper as sh

    if sh._parse_arg(align_corners, "b"):
        raise RuntimeError("antialiased resize with align_corners=True has no ONNX equivalent")
    size = torch.tensor(sh._parse_arg(output_size, "is"), dtype=torch.int64)
    shape = g.op("Shape", x)
    batch_chan = g.op("Slice", shape, g.op("Constant", value_t=torch.tensor([0])),
                      g.op("Constant", value_t=torch.tensor([2])))
    sizes = g.op("Concat", batch_chan, g.op("Constant", value_t=size), axis_i=0)
    empty = g.op("Constant", value_t=torch.tensor([], dtype=torch.float32))
    return g.op("Resize", x, empty, empty, sizes, mode_s="linear", antialias_i=1, exclude_outside_i=1,
                coordinate_transformation_mode_s="half_pixel")


def _register_symbolics(opset: int) -> None:
    from torch.onnx import register_custom_op_symbolic

    register_custom_op_symbolic("aten::_upsample_bilinear2d_aa", _resize_antialias_symbolic, opset)


def sha256_file(path: str) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB blocks); raises ``OSError`` if unreadable."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_EXPORT_LOCK = threading.Lock()  #: one torch.onnx.export at a time in this process


def export_onnx(net: DiTTANet, frame_hw: Tuple[int, int], out_dir: str, name: str, label_set: str = "",
                classes=(), tau: float = DEFAULT_TAU, adaptation: Optional[Dict[str, object]] = None,
                opset: int = DEFAULT_OPSET, fp16: bool = False, antialias: bool = True,
                fusion: str = "frame", plain_logits: bool = False, flow_grid: str = "addon") -> Tuple[str, str]:
    """Export the streaming model for frames of ``frame_hw`` = (H, W).

    Args:
        net: the (adapted) network; exported in eval mode, on the CPU, float32.
        frame_hw: frame size in pixels (the graph has fixed shapes).
        out_dir: output folder (created).
        name: model name for the file stem and metadata.
        tau: fusion threshold baked into the graph (0 = plain ISS branch only).
        opset: ONNX opset, >= 18 when ``antialias``.
        fp16: record ``precision: fp16`` in the metadata: the runtimes that can run
            half precision honour it (TensorRT engine build and the onnxruntime
            TensorRT EP with FP16 enabled, torch on CUDA in half). The ONNX itself
            stays float32 (TensorRT picks fp16 kernels from it per layer; a float16
            ONNX would not run on the CPU execution provider).
        antialias: PIL-like antialiased input resize (``Resize antialias=1``);
            ``False`` for runtimes without it.
        fusion: ``frame`` | ``grid`` | ``flow`` | ``memory`` | ``bayes`` (:class:`~ditta_ros.streaming.StreamingDiTTA`).
        plain_logits: a fifth output, ``plain_logits`` float32 ``[1, C, h, w]`` (the ISS logits on its own
            grid, where the graph's stateless part ends; for splitting the graph, not for serving).
        flow_grid: the grid of a flow fusion's state, ``addon`` | ``model``
            (:class:`~ditta_ros.streaming.StreamingDiTTA`).

    Returns:
        ``(onnx_path, metadata_path)``; the stem is ``ditta_<name>_<H>x<W>``.

    Raises:
        ValueError: ``antialias`` with ``opset < 18``.
        onnx.checker.ValidationError: the exported graph is invalid.
    """
    import onnx

    if antialias and opset < 18:
        raise ValueError(f"the antialiased input resize needs opset >= 18 (got {opset}); or pass antialias=False")
    import copy

    # a copy: the caller's network keeps its device, dtype and memory layout
    net = copy.deepcopy(net).cpu().float().to(memory_format=torch.contiguous_format)
    model = StreamingDiTTA(net, frame_hw, tau, antialias=antialias, fusion=fusion, flow_grid=flow_grid)
    model.plain_logits_output = bool(plain_logits)
    output_names = OUTPUT_NAMES + (["plain_logits"] if plain_logits else [])
    _register_symbolics(opset)
    os.makedirs(out_dir, exist_ok=True)
    stem = f"ditta_{name}_{frame_hw[0]}x{frame_hw[1]}"
    path = os.path.join(out_dir, stem + ".onnx")
    example = (torch.zeros(*frame_hw, 3, dtype=torch.uint8), *model.initial_state())
    t0 = time.perf_counter()
    # torch's ONNX exporter keeps its "exporting" flag per process: two exports at once (the ISS graph prepared
    # in the background while an adaptation exports) would clear it under each other's feet
    with _EXPORT_LOCK, torch.no_grad():
        torch.onnx.export(model, example, path, input_names=INPUT_NAMES, output_names=output_names,
                          opset_version=opset, dynamo=False, do_constant_folding=True)
    seconds = time.perf_counter() - t0
    onnx.checker.check_model(onnx.load(path))
    pp = net.iss.preprocess
    meta = {
        "format": EXPORT_FORMAT, "model": name, "family": net.iss.family, "label_set": label_set, "classes": list(classes),
        "num_classes": net.iss.num_classes, "frame_hw": list(frame_hw), "input_hw": list(model.input_hw),
        "normalisation": {"mean": list(pp.mean), "std": list(pp.std), "scale": "1/255", "channel_order": "RGB"},
        "tau": tau, "fusion": fusion, "flow_grid": flow_grid, "radius": net.addon.radius,
        "addon_grid_stride": net.addon.grid_stride, "opset": opset,
        "precision": "fp16" if fp16 else "fp32", "antialias": bool(antialias),
        "inputs": {"image": ["uint8", [*frame_hw, 3]],
                   "feat_prev": ["float32", list(model.state_shapes["feat_prev"])],
                   "logits_prev": ["float32", list(model.state_shapes["logits_prev"])],
                   "has_prev": ["float32", list(frame_hw)]},
        "outputs": {"labels": ["int64", list(frame_hw)], "confidence": ["float32", list(frame_hw)],
                    "feat": ["float32", list(model.state_shapes["feat_prev"])],
                    "logits": ["float32", list(model.state_shapes["logits_prev"])]},
        **({"extra_outputs": {"plain_logits": ["float32", list(model.plain_logits_shape)]}} if plain_logits else {}),
        "adaptation": adaptation or {"adapted": False},
        "export_seconds": round(seconds, 3), "torch": torch.__version__,
        "sha256": sha256_file(path),
    }
    meta_path = os.path.join(out_dir, stem + ".json")
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=2)
    return path, meta_path
