"""Choosing one of several candidate adaptations without labels (``docs/dev_set_rule.md``,
addendum 4): every candidate adapts on the warm-up frames that are not held out
(:func:`holdout`), then streams all warm-up frames; it is *admissible* when the do-no-harm guard
accepts it and its :func:`held_out_gain` (agreement with one conservative reference target on the
held-out frames, minus the ISS's) is at least :data:`MIN_GAIN`; :func:`choose` takes the admissible
candidate with the highest gain (within :data:`TIE` of the best: the earlier one), or none (the ISS
serves). Ours; the paper adapts one configuration.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

#: every HOLDOUT_EVERY-th warm-up frame (t % HOLDOUT_EVERY == HOLDOUT_EVERY - 1) is held out
HOLDOUT_EVERY = 3
#: the lowest held-out gain (a share, -0.5 percentage points) of an admissible candidate
MIN_GAIN = -0.005
#: gains within this of the best (0.1 percentage points) are a tie: the earlier candidate wins
TIE = 0.001
#: the name of the model serving now when a re-adaptation judges it beside the new candidates (first
#: in the order: a tie keeps it)
INCUMBENT = "serving"


def holdout(n: int) -> Tuple[List[int], List[int]]:
    """``(train, held)`` indices of ``n`` warm-up frames: ``t % 3 == 2`` held out; fewer than 3 frames:
    none held out (the guard alone judges).

    Raises:
        ValueError: ``n`` < 1.
    """
    if n < 1:
        raise ValueError(f"need at least one warm-up frame, got {n}")
    held = [t for t in range(n) if t % HOLDOUT_EVERY == HOLDOUT_EVERY - 1] if n >= HOLDOUT_EVERY else []
    return [t for t in range(n) if t not in held], held


def held_out_gain(labels: Sequence[np.ndarray], reference: Sequence[np.ndarray], iss: Sequence[np.ndarray],
                  held: Sequence[int]) -> float:
    """Share of the held-out pixels on which ``labels`` agree with ``reference``, minus the same share
    for ``iss`` (in [-1, 1]; 0 without held-out frames). ``iss`` is the pre-trained model on the
    candidates' own streaming path, so that preprocessing differences cancel.

    Args:
        labels, reference, iss: per warm-up frame, ``[H, W]`` integer class ids of one size per frame.
        held: indices of the held-out frames.
    """
    if not held:
        return 0.0
    agree = sum(int(np.count_nonzero(labels[t] == reference[t])) for t in held)
    base = sum(int(np.count_nonzero(iss[t] == reference[t])) for t in held)
    return (agree - base) / float(sum(reference[t].size for t in held))


@dataclass
class Evidence:
    """What one candidate showed: its ``gain`` (:func:`held_out_gain`), the guard's verdict
    (``refused``, ``changed`` share, ``reasons``) and its adaptation ``seconds``."""

    gain: float
    refused: bool
    changed: float = 0.0
    reasons: List[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def admissible(self) -> bool:
        """The guard accepts it and its gain is at least :data:`MIN_GAIN`."""
        return not self.refused and self.gain >= MIN_GAIN


def choose(evidence: Dict[str, Evidence], order: Sequence[str]) -> Tuple[Optional[str], str]:
    """The candidate that serves (``None``: the ISS) and why, in words.

    Args:
        evidence: per candidate name.
        order: the candidates in preference order for ties.
    """
    ok = [n for n in order if n in evidence and evidence[n].admissible]
    if not ok:
        why = "; ".join(f"{n}: " + ("guard refused" if evidence[n].refused else f"held-out gain "
                                    f"{100 * evidence[n].gain:+.2f} pt < {100 * MIN_GAIN:+.1f}")
                        for n in order if n in evidence)
        return None, f"no admissible candidate ({why})"
    best = max(evidence[n].gain for n in ok)
    chosen = next(n for n in ok if evidence[n].gain >= best - TIE)
    return chosen, f"{chosen}: held-out gain {100 * evidence[chosen].gain:+.2f} pt, the best of {', '.join(ok)}"


def report(chosen: Optional[str], why: str, evidence: Dict[str, Evidence], held: Sequence[int]) -> Dict[str, object]:
    """The ``selection`` entry of a result: the chosen candidate, why, the held-out frames and each
    candidate's evidence."""
    return {"chosen": chosen, "why": why, "held_out": list(held),
            "candidates": {n: {**asdict(e), "admissible": e.admissible} for n, e in evidence.items()}}
