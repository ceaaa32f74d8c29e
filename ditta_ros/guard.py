"""The do-no-harm guard: a label-free check of an adapted model before it serves.

After adaptation, the adapted streaming model runs on the warm-up frames (state
carried, as it will stream) and is compared with the frozen ISS predictions of
the same frames. Only pixels the ISS labels *confidently* (Eq. 2 reliability >=
``conf``) are used; the adaptation is refused when

* more than ``max_changed`` of those pixels change label, or
* a class that the ISS predicts confidently on at least ``min_class_share`` of the
  warm-up pixels keeps its label on fewer than ``min_kept`` of them (a lost class).

The thresholds are fixed in ``docs/dev_set_rule.md`` before any measurement. A
refused adaptation is not served: the ISS model is (``ditta eval`` records the
refusal in ``result.json``, the node in its status and diagnostics).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Sequence

import numpy as np


@dataclass(frozen=True)
class GuardConfig:
    """Thresholds of the guard (module docstring); ``enabled=False`` accepts everything.

    Raises:
        ValueError: a share outside [0, 1].
    """

    enabled: bool = True
    conf: float = 0.8
    max_changed: float = 0.10
    min_class_share: float = 0.005
    min_kept: float = 0.5

    def __post_init__(self):
        for k in ("conf", "max_changed", "min_class_share", "min_kept"):
            if not 0.0 <= getattr(self, k) <= 1.0:
                raise ValueError(f"guard {k} must lie in [0, 1], got {getattr(self, k)}")


@dataclass
class GuardVerdict:
    """What the guard found.

    Attributes:
        refused: True when the adapted model must not serve.
        changed: share of confident ISS pixels whose label changed (0..1).
        lost_classes: ISS class ids lost (kept share < ``min_kept``).
        kept_per_class: {class id: kept share} for the classes checked.
        reasons: human-readable reasons of a refusal (empty when accepted).
    """

    refused: bool
    changed: float
    lost_classes: List[int] = field(default_factory=list)
    kept_per_class: Dict[int, float] = field(default_factory=dict)
    reasons: List[str] = field(default_factory=list)

    def as_dict(self) -> Dict[str, object]:
        d = asdict(self)
        d["changed"] = round(self.changed, 5)
        d["kept_per_class"] = {int(k): round(v, 4) for k, v in self.kept_per_class.items()}
        return d


def check(adapted: Sequence[np.ndarray], iss: Sequence[np.ndarray], rels: Sequence[np.ndarray],
          cfg: GuardConfig = GuardConfig()) -> GuardVerdict:
    """Compare an adapted model's labels with the frozen ISS on the warm-up frames.

    Args:
        adapted: ``T`` int ``[H, W]`` labels of the adapted streaming model.
        iss: ``T`` int ``[H, W]`` frozen ISS labels; rels: ``T`` float ``[H, W]`` their Eq. 2 reliability.
        cfg: thresholds.

    Returns:
        :class:`GuardVerdict` (never refused when ``cfg.enabled`` is False; the
        figures are still computed).

    Raises:
        ValueError: the sequences differ in length or a frame in shape.
    """
    if not (len(adapted) == len(iss) == len(rels)):
        raise ValueError(f"guard: {len(adapted)} adapted, {len(iss)} ISS and {len(rels)} reliability frames")
    hit: Dict[int, int] = {}
    tot: Dict[int, int] = {}
    changed = confident = pixels = 0
    for a, p, r in zip(adapted, iss, rels):
        if a.shape != p.shape or p.shape != r.shape:
            raise ValueError(f"guard: shapes differ {a.shape} / {p.shape} / {r.shape}")
        sure = r >= cfg.conf
        pixels += sure.size
        confident += int(sure.sum())
        same = (a == p) & sure
        changed += int(sure.sum() - same.sum())
        for c in np.unique(p[sure]):
            c = int(c)
            m = sure & (p == c)
            tot[c] = tot.get(c, 0) + int(m.sum())
            hit[c] = hit.get(c, 0) + int((same & m).sum())
    share = changed / max(confident, 1)
    kept = {c: hit[c] / tot[c] for c in tot if tot[c] >= cfg.min_class_share * max(pixels, 1)}
    lost = sorted(c for c, k in kept.items() if k < cfg.min_kept)
    reasons = []
    if share > cfg.max_changed:
        reasons.append(f"{100 * share:.1f}% of the confident ISS pixels changed label "
                       f"(limit {100 * cfg.max_changed:.0f}%)")
    if lost:
        reasons.append("lost classes " + ", ".join(f"{c} (kept {100 * kept[c]:.0f}%)" for c in lost))
    return GuardVerdict(bool(reasons) and cfg.enabled, share, lost, kept, reasons)
