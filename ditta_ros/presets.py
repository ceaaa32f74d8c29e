"""DiTTA's hyper-parameters: one :class:`DittaConfig`, built from a named preset plus
overrides (:meth:`DittaConfig.from_preset`) by every front door -- the node
(:meth:`ditta_ros.live.config.LiveConfig.ditta_config`), ``ditta eval``, ``ditta suite``,
the demo and the benchmarks -- and written back as the stored hyper-parameters of a run
(:meth:`DittaConfig.hyper`).

Presets (:data:`PRESETS`):

* ``faithful`` -- the official code's hyper-parameters: targets as upstream, the decoder
  adapted with the official losses, no guard, no fusion gate, the add-on branch at frame
  resolution;
* ``default`` -- what the decision rule of ``docs/dev_set_rule.md`` chose on the development
  set: gated targets, only the add-on adapted (corrected losses), the guard on, no add-on
  fusion for frames more than 0.2 s apart, the add-on branch's probabilities on its own
  grid (``fusion="grid"``, addendum 2 of that rule);
* ``decoder`` -- ``default`` with the decoder adapted (BatchNorm frozen, KL anchor to the ISS);
* ``select`` -- three candidate adaptations (``default``, ``decoder``, ``faithful``), one of which, or
  none, is chosen label-free on held-out warm-up frames (:mod:`ditta_ros.selector`, addendum 4 of the
  rule), served with the flow branch (``fusion="flow"``: the Eq. 3 fusion with the previous frame's
  plain logits moved by optical flow as its temporal branch, addendum 7), ``max_gap`` 0.2 s; its
  add-on-only candidate then trains nothing and is the ISS with the flow branch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from .adapt import FAITHFUL_ADAPT, AdaptConfig
from .addon import DEFAULT_TAU
from .guard import GuardConfig
from .teacher.targets import FAITHFUL_TARGETS, TargetConfig

#: the temporal branch of the Eq. 3 fusion: the add-on's probabilities at frame resolution or on its grid,
#: or the previous frame's logits moved by optical flow, or a running memory of fused probabilities moved by
#: optical flow, or a recursive Bayesian product of them (:class:`~ditta_ros.streaming.StreamingDiTTA`)
FUSIONS = ("frame", "grid", "flow", "memory", "bayes")
#: the fusions whose temporal branch is the moved state itself (no add-on attention)
FLOW_FUSIONS = ("flow", "memory", "bayes")
#: the fusions whose state is a running memory rather than the previous frame's plain logits
MEMORY_FUSIONS = ("memory", "bayes")
#: where a flow fusion keeps its temporal state: the add-on grid (the model's output grid pooled by the add-on's
#: stride) or the model's own output grid (``docs/dev_set_rule.md``, addendum 16)
FLOW_GRIDS = ("addon", "model")


@dataclass(frozen=True)
class DittaConfig:
    """Every hyper-parameter of the DiTTA method.

    Attributes:
        preset: the preset this configuration started from (:data:`PRESETS`).
        target: distillation targets (Sec. 3.2, Eq. 4; :class:`~ditta_ros.teacher.targets.TargetConfig`).
        adapt: test-time adaptation (Eq. 5-8; :class:`~ditta_ros.adapt.AdaptConfig`).
        guard: the do-no-harm guard (:class:`~ditta_ros.guard.GuardConfig`).
        tau: reliability threshold of the Eq. 3 fusion, in [0, 1] (0: the add-on is off).
        motion_gate: fuse only where optical flow stays within the add-on's window
            (:class:`~ditta_ros.gates.MotionGate`).
        max_gap: seconds; frames farther apart are served by the plain branch (0: no limit).
        fusion: ``frame`` (official) | ``grid`` | ``flow`` (the temporal branch is the previous frame's
            plain logits moved by optical flow, no attention; implies the warp) | ``memory`` (as ``flow`` with a
            running memory of fused probabilities as the temporal branch; addendum 9) | ``bayes`` (as ``memory``,
            the memory and the labels by the recursive Bayesian product instead of Eq. 3's average, below
            ``tau``; addenda 14, 15):
            :class:`~ditta_ros.streaming.StreamingDiTTA`.
        addon_stride: pooling of the decoder grid for the add-on (0: the model card's).
        candidates: presets whose targets and adaptation are tried, one chosen label-free
            (:mod:`ditta_ros.selector`); empty: this configuration's own alone.
        warp: move the previous frame's state by optical flow before the add-on attends, and fuse
            only where the flow is forward-backward consistent (:class:`~ditta_ros.gates.FlowWarp`).
        gap_factor: when > 0, frames farther apart than ``gap_factor`` x the frame gap the add-on
            was trained on (the warm-up's) are served by the plain branch, instead of ``max_gap``.
        warp_residual: grey levels (0..255); when > 0, where the state is moved by optical flow
            (:attr:`warps`) a pixel also fuses only where the flow-moved previous frame differs from the
            current one by at most this much on average over a 9 x 9 neighbourhood
            (:class:`~ditta_ros.gates.FlowWarp`; ``docs/dev_set_rule.md``, addendum 12). 0: the
            forward-backward check alone.
        flow_grid: where a fusion of :data:`FLOW_FUSIONS` keeps, moves and gates its temporal state:
            ``addon`` (the add-on grid, the model's output grid pooled by the add-on's stride: 1/4 of the input for
            ESPNetv2) or ``model`` (the model's own output grid, unpooled: 1/2 of the input for ESPNetv2;
            ``docs/dev_set_rule.md``, addendum 16).
        changes: the target, adaptation and guard overrides :meth:`from_preset` applied (``(key,
            value)`` pairs); the candidates get them too.

    Raises:
        ValueError: ``tau`` outside [0, 1], a negative ``max_gap``, ``addon_stride``, ``gap_factor`` or
            ``warp_residual``, an unknown ``fusion`` or ``flow_grid``, ``flow_grid="model"`` without a fusion of
            :data:`FLOW_FUSIONS` (the add-on attends on its own grid).
    """

    preset: str
    target: TargetConfig
    adapt: AdaptConfig
    guard: GuardConfig
    tau: float = DEFAULT_TAU
    motion_gate: bool = False
    max_gap: float = 0.0
    fusion: str = "frame"
    addon_stride: int = 0
    candidates: Tuple[str, ...] = ()
    warp: bool = False
    gap_factor: float = 0.0
    warp_residual: float = 0.0
    flow_grid: str = "addon"
    changes: Tuple[Tuple[str, object], ...] = ()

    def __post_init__(self):
        if not 0.0 <= self.tau <= 1.0:
            raise ValueError(f"tau must lie in [0, 1], got {self.tau}")
        if self.max_gap < 0 or self.addon_stride < 0 or self.gap_factor < 0 or self.warp_residual < 0:
            raise ValueError(f"max_gap, addon_stride, gap_factor and warp_residual must be >= 0, got {self.max_gap}, "
                             f"{self.addon_stride}, {self.gap_factor}, {self.warp_residual}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.flow_grid not in FLOW_GRIDS:
            raise ValueError(f"flow_grid must be one of {FLOW_GRIDS}, got {self.flow_grid!r}")
        if self.flow_grid != "addon" and self.fusion not in FLOW_FUSIONS:
            raise ValueError(f"flow_grid={self.flow_grid!r} needs a flow fusion {FLOW_FUSIONS}, "
                             f"got fusion={self.fusion!r}")

    def fusion_limit(self, trained_gap: Optional[float] = None) -> float:
        """Seconds: frames farther apart are served by the plain branch (0: no limit):
        ``gap_factor`` x ``trained_gap`` (the frame gap the add-on was trained on) when both are set,
        else ``max_gap``."""
        if self.gap_factor > 0 and trained_gap:
            return self.gap_factor * trained_gap
        return self.max_gap

    @property
    def trains_nothing_served(self) -> bool:
        """True when only the add-on would adapt and the served graph never uses it (``tau`` 0, or
        a ``fusion`` of :data:`FLOW_FUSIONS`, whose temporal branch is the moved state): nothing to train."""
        return self.adapt.params == "addon" and (self.tau <= 0 or self.fusion in FLOW_FUSIONS)

    @property
    def warps(self) -> bool:
        """True when the previous frame's state is moved by optical flow before the temporal branch
        (``warp``, or a ``fusion`` of :data:`FLOW_FUSIONS`, whose branch is the moved state itself)."""
        return self.warp or self.fusion in FLOW_FUSIONS

    @property
    def judged(self) -> "DittaConfig":
        """The configuration a candidate of the selector is judged with (``docs/dev_set_rule.md``,
        addendum 8): with a ``fusion`` of :data:`FLOW_FUSIONS` its plain, adapted branch (``tau`` 0), since the
        flow branch is not adapted and serves on top of whichever candidate is chosen, the ISS included; else
        this configuration itself (the add-on is part of what each candidate adapts)."""
        return dataclasses.replace(self, tau=0.0) if self.fusion in FLOW_FUSIONS else self

    def candidate_configs(self) -> List[Tuple[str, "DittaConfig"]]:
        """``[(name, config)]`` of :attr:`candidates`: each preset's targets and adaptation with this
        configuration's target and adaptation overrides (:attr:`changes`), serving (``tau``, gates,
        ``fusion``, ``addon_stride``) and guard.

        Raises:
            ValueError: an unknown preset, or one that has candidates itself.
        """
        out = []
        for name in self.candidates:
            if name not in PRESETS or PRESETS[name].candidates:
                raise ValueError(f"candidate {name!r} is not a preset without candidates "
                                 f"({', '.join(n for n, p in PRESETS.items() if not p.candidates)})")
            own = {k: v for k, v in self.changes if _KEY_GROUP[k] in ("target", "adapt")}
            p = DittaConfig.from_preset(name, **own)
            out.append((name, dataclasses.replace(self, preset=name, target=p.target, adapt=p.adapt, candidates=())))
        return out

    @classmethod
    def from_preset(cls, name: str = "default", **overrides) -> "DittaConfig":
        """Preset ``name`` with ``overrides`` applied; an override of ``None`` keeps the
        preset's value.

        Override keys (:func:`override_keys`): a field of :class:`TargetConfig` or
        :class:`AdaptConfig` (``lr``, ``iters``, ``max_track``, ...), ``guard_<field>`` of
        :class:`GuardConfig` (``guard_enabled``, ``guard_max_changed``, ...), and ``tau``,
        ``motion_gate``, ``max_gap``, ``fusion``, ``addon_stride``. Numbers are converted to
        the field's type (an integer is accepted for a float).

        Raises:
            ValueError: unknown preset or key, or a value a config rejects.
        """
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
        base = PRESETS[name]
        groups = {"target": {}, "adapt": {}, "guard": {}}
        scalars = {}
        for key, value in overrides.items():
            if value is None:
                continue
            group = _KEY_GROUP.get(key)
            if group is None:
                raise ValueError(f"unknown DiTTA option {key!r}; options: {', '.join(override_keys())}")
            if group == "":
                scalars[key] = _typed(getattr(base, key), value, key)
            else:
                field = key[len("guard_"):] if group == "guard" else key
                groups[group][field] = _typed(getattr(getattr(base, group), field), value, key)
        changes = tuple(sorted((k, v) for k, v in overrides.items() if v is not None and _KEY_GROUP.get(k)))
        return dataclasses.replace(base, preset=name, **scalars, changes=changes,
                                   **{g: dataclasses.replace(getattr(base, g), **ch) for g, ch in groups.items() if ch})

    def hyper(self, runtime=None) -> Dict[str, object]:
        """The stored hyper-parameters of a run (``result.json`` ``hyper``; a stored suite
        run is reused only when they match): the three configs, ``tau``, the gates, the
        newer options only when not their default (runs stored before they existed stay
        comparable), and ``runtime``'s :meth:`~ditta_ros.runtime.options.RuntimeOptions.hyper`."""
        out = {"target": dataclasses.asdict(self.target), "adapt": dataclasses.asdict(self.adapt), "tau": self.tau,
               "guard": dataclasses.asdict(self.guard), "motion_gate": self.motion_gate, "max_gap": self.max_gap}
        if runtime is not None:
            out.update(runtime.hyper())
        if self.fusion != "frame":
            out["fusion"] = self.fusion
        if self.addon_stride:
            out["addon_stride"] = self.addon_stride
        if self.candidates:
            out["candidates"] = list(self.candidates)
        if self.warp:
            out["warp"] = True
        if self.gap_factor:
            out["gap_factor"] = self.gap_factor
        if self.warp_residual:
            out["warp_residual"] = self.warp_residual
        if self.flow_grid != "addon":
            out["flow_grid"] = self.flow_grid
        if not self.target.temporal_vote:  # a target option newer than the stored runs
            del out["target"]["temporal_vote"]
        return out


def _typed(current, value, key: str):
    """``value`` as the type of ``current`` (bool, int, float or str)."""
    try:
        if isinstance(current, bool):
            if isinstance(value, bool) or value in (0, 1):
                return bool(value)
            raise TypeError
        if isinstance(current, int):
            if isinstance(value, float) and value != int(value):
                raise TypeError
            return int(value)
        return type(current)(value)
    except (TypeError, ValueError):
        raise ValueError(f"DiTTA option {key!r}: {value!r} is not a {type(current).__name__}") from None


#: the preset the node and ``ditta eval`` use unless told otherwise: chosen by the decision rule of
#: ``docs/dev_set_rule.md`` on the development suite of issue 19 (``select``: worst-clip ΔmIoU -0.1 against
#: ``default``'s -0.8; with the flow branch, addendum 7, mean ΔmIoU +0.6 against +0.1;
#: ``bench/results/dev_suite_espnetv2-s2.0-cityscapes-1024x512/``)
DEFAULT_PRESET = "select"

#: the named configurations (module docstring)
PRESETS: Dict[str, DittaConfig] = {
    "faithful": DittaConfig("faithful", FAITHFUL_TARGETS, FAITHFUL_ADAPT, GuardConfig(enabled=False), DEFAULT_TAU,
                            motion_gate=False, max_gap=0.0, fusion="frame", addon_stride=0),
    "default": DittaConfig("default", TargetConfig(), AdaptConfig(), GuardConfig(), DEFAULT_TAU,
                           motion_gate=False, max_gap=0.2, fusion="grid", addon_stride=0),
    "decoder": DittaConfig("decoder", TargetConfig(), AdaptConfig(params="decoder"), GuardConfig(), DEFAULT_TAU,
                           motion_gate=False, max_gap=0.2, fusion="grid", addon_stride=0),
    "select": DittaConfig("select", TargetConfig(), AdaptConfig(), GuardConfig(), DEFAULT_TAU,
                          motion_gate=False, max_gap=0.2, fusion="flow", addon_stride=0,
                          candidates=("default", "decoder", "faithful")),
}

_SCALARS = ("tau", "motion_gate", "max_gap", "fusion", "addon_stride", "warp", "gap_factor", "warp_residual",
            "flow_grid")


def _key_groups() -> Dict[str, str]:
    keys: Dict[str, str] = {k: "" for k in _SCALARS}
    for group, cls, prefix in (("target", TargetConfig, ""), ("adapt", AdaptConfig, ""), ("guard", GuardConfig, "guard_")):
        for f in dataclasses.fields(cls):
            name = prefix + f.name
            if name in keys:  # a name two configs share would be ambiguous
                raise AssertionError(f"option {name!r} belongs to two configs")
            keys[name] = group
    return keys


_KEY_GROUP = _key_groups()


def override_keys() -> tuple:
    """Every key :meth:`DittaConfig.from_preset` accepts."""
    return tuple(_KEY_GROUP)


def preset_value(name: str, key: str) -> Optional[object]:
    """The value of override ``key`` in preset ``name`` (help texts: "preset: ...").

    Raises:
        ValueError: unknown preset or key.
    """
    cfg = DittaConfig.from_preset(name)
    group = _KEY_GROUP.get(key)
    if group is None:
        raise ValueError(f"unknown DiTTA option {key!r}")
    if group == "":
        return getattr(cfg, key)
    return getattr(getattr(cfg, group), key[len("guard_"):] if group == "guard" else key)
