"""Accuracy against consistency of issue 19's serving variants on the video-rate rows (addenda 4-16).

No new run: each point is a stored ``result.json`` of a development-suite run (``docs/dev_set_rule.md``, the addendum
named in the table), read as ΔmIoU and ΔmVC8 against the frame-wise ISS row of the same run folder, on the 15 Hz
CamVid clip at strides 1, 2 and 4 (the rows where a temporal branch can fuse). The issue's goal for each row is drawn
as a shaded box (stride 1: ΔmIoU >= 0 and ΔmVC8 >= +5; strides 2 and 4: ΔmIoU >= -0.3 and ΔmVC8 >= +3); a point
inside it meets that row's goal. The oracle point (``oracle@select``: ground-truth targets through the selector) shows
what better targets would give; it is not a candidate, and not a bound on consistency.

    python bench/fusion_tradeoff.py   # writes bench/results/fusion_tradeoff.{json,md,png}
"""

from __future__ import annotations

import json
import os
import sys
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import RESULTS, write_markdown, write_results  # noqa: E402

from ditta_ros.tools.suite import parse_variant  # noqa: E402  (the suite's folder name of a variant)

MODEL = "espnetv2-s2.0-cityscapes-1024x512"
#: row (clip folder) -> (title, goal: minimum ΔmIoU, minimum ΔmVC8) as issue 19 states it
ROWS: Dict[str, Tuple[str, float, float]] = {
    "camvid_0016E5_15hz": ("15 Hz, stride 1 (0.07 s)", 0.0, 5.0),
    "camvid_0016E5_15hz_s2": ("15 Hz, stride 2 (0.13 s)", -0.3, 3.0),
    "camvid_0016E5_15hz_s4": ("15 Hz, stride 4 (0.27 s)", -0.3, 3.0),
}
#: (label, run folder prefix, the suite's variant spec, where it is decided): the serving variants of issue 19
#: (addenda 4-16 of ``docs/dev_set_rule.md``), each from the run folder its addendum names, and the oracle; a run's
#: sub-folder is its spec's slug, as ``ditta suite`` names it
VARIANTS: List[Tuple[str, str, str, str]] = [
    ("preset `default` (add-on fusion)", "fusion_variants", "ditta", "addenda 4-5"),
    ("default:warp=true", "fusion_variants", "ditta:warp=true", "addendum 5"),
    ("default:gap_factor=1.5", "fusion_variants", "ditta:gap_factor=1.5", "addendum 5"),
    ("default:warp=true,gap_factor=1.5", "fusion_variants", "ditta:warp=true,gap_factor=1.5", "addendum 5"),
    ("default:fusion=flow", "flow_branch", "ditta:fusion=flow", "addendum 6"),
    ("default:fusion=flow,max_gap=0", "flow_branch", "ditta:fusion=flow,max_gap=0", "addendum 6"),
    ("select, add-on fusion (then the preset)", "flow_select", "ditta@select", "addendum 4"),
    ("select:fusion=flow, judged fused", "flow_select", "ditta@select:fusion=flow", "addendum 7"),
    ("select (the preset: flow branch, judged plain)", "select_plain_judge", "ditta@select", "addendum 8"),
    ("select:fusion=memory", "memory_select", "ditta@select:fusion=memory", "addendum 9"),
    ("select:teacher=mobilesam", "mobilesam_select", "ditta@select:teacher=mobilesam", "addendum 11"),
    ("select:max_gap=0,warp_residual=20", "residual_gate", "ditta@select:max_gap=0,warp_residual=20", "addendum 12"),
    ("select:tau=1", "tau1_select", "ditta@select:tau=1", "addendum 13"),
    ("select:fusion=bayes,tau=1 (product everywhere)", "bayes_select", "ditta@select:fusion=bayes", "addendum 14"),
    ("select:fusion=bayes (gated product)", "bayes_gated_select", "ditta@select:fusion=bayes", "addendum 15"),
    ("select:flow_grid=model", "flow_grid", "ditta@select:flow_grid=model", "addendum 16 A"),
    ("select:fusion=bayes,flow_grid=model", "flow_grid", "ditta@select:fusion=bayes,flow_grid=model", "addendum 16 B"),
    ("oracle@select (ground-truth targets)", "dev_suite", "oracle@select", "oracle"),
]


def _load(results: str, folder: str, row: str, spec: str) -> Optional[Dict[str, object]]:
    path = os.path.join(results, f"{folder}_{MODEL}", row, parse_variant(spec).slug, "result.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def points(results: str = RESULTS) -> List[Dict[str, object]]:
    """One dict per (variant, row) found on disk: ``label``, ``row``, ``decided``, ``d_miou``, ``d_mvc8`` (points,
    against the ISS row of the same run folder, unrounded: the table rounds once), ``served`` (the selector's choice or ``None``), ``meets_goal``.
    A variant whose run lacks a row (or its ISS row) is left out of that row."""
    out = []
    for label, folder, spec, decided in VARIANTS:
        for row, (_, min_miou, min_mvc) in ROWS.items():
            run, iss = _load(results, folder, row, spec), _load(results, folder, row, "iss")
            if run is None or iss is None:
                continue
            d_miou, d_mvc = run["mIoU"] - iss["mIoU"], run["mVC8"] - iss["mVC8"]
            out.append({"label": label, "row": row, "decided": decided, "d_miou": d_miou,
                        "d_mvc8": d_mvc, "served": (run.get("selection") or {}).get("chosen"),
                        "meets_goal": bool(d_miou >= min_miou and d_mvc >= min_mvc)})
    return out


def plot(pts: List[Dict[str, object]], path: str) -> None:
    """One panel per row of :data:`ROWS`: ΔmIoU (x, points) against ΔmVC8 (y, points) of ``pts``
    (:func:`points`), the row's goal shaded, written as a PNG to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [v[0] for v in VARIANTS]
    cmap, markers = plt.get_cmap("tab20"), "osD^vP<>Xh"
    fig, axes = plt.subplots(1, len(ROWS), figsize=(6 * len(ROWS), 6.2))
    for ax, (row, (title, min_miou, min_mvc)) in zip(axes, ROWS.items()):
        mine = [p for p in pts if p["row"] == row]
        xs = [p["d_miou"] for p in mine] + [min_miou]
        ys = [p["d_mvc8"] for p in mine] + [min_mvc]
        x0, x1, y0, y1 = min(xs) - 0.6, max(xs) + 0.6, min(ys + [0.0]) - 0.6, max(ys) + 0.8
        ax.add_patch(plt.Rectangle((min_miou, min_mvc), x1 - min_miou, y1 - min_mvc, color="tab:green", alpha=0.12,
                                   label="issue goal"))
        for p in mine:
            k = labels.index(p["label"])
            oracle = p["decided"] == "oracle"
            ax.scatter(p["d_miou"], p["d_mvc8"], color="black" if oracle else cmap(k % 20),
                       marker="*" if oracle else markers[k % len(markers)],
                       s=140 if oracle else 60, edgecolor="black", linewidth=0.5, label=p["label"], zorder=3)
        ax.axhline(0, color="grey", lw=0.5)
        ax.axvline(0, color="grey", lw=0.5)
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        ax.set_title(title)
        ax.set_xlabel("ΔmIoU vs ISS (points)")
        ax.set_ylabel("ΔmVC8 vs ISS (points)")
        ax.grid(alpha=0.3)
    handles, names = [], []
    for ax in axes:
        for h, n in zip(*ax.get_legend_handles_labels()):
            if n not in names:
                handles.append(h)
                names.append(n)
    fig.legend(handles, names, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(f"{MODEL} on CamVid 0016E5: accuracy against consistency of issue 19's serving variants "
                 "(stored runs)")
    fig.tight_layout(rect=(0, 0.2, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(pts: List[Dict[str, object]]) -> List[str]:
    """Markdown lines: one row per entry of :data:`VARIANTS`, ``ΔmIoU / ΔmVC8`` per row of :data:`ROWS` rounded
    once to 0.1 (``-`` where the run lacks it, ``(goal met)`` where both reach the goal)."""
    out = ["| variant | decided in | " + " | ".join(ROWS[r][0] for r in ROWS) + " |",
           "|---|---|" + "---|" * len(ROWS)]
    for label, _, _, decided in VARIANTS:
        cells = []
        for row in ROWS:
            p = next((q for q in pts if q["label"] == label and q["row"] == row), None)
            cells.append("-" if p is None else
                         f"{p['d_miou']:+.1f} / {p['d_mvc8']:+.1f}{' (goal met)' if p['meets_goal'] else ''}")
        out.append(f"| {label} | {decided} | " + " | ".join(cells) + " |")
    return out


def main() -> None:
    pts = points()
    write_results("fusion_tradeoff", {"model": MODEL, "rows": {r: {"title": t, "min_d_miou": a, "min_d_mvc8": b}
                                                                for r, (t, a, b) in ROWS.items()},
                                      "points": [dict(p, d_miou=round(p["d_miou"], 4), d_mvc8=round(p["d_mvc8"], 4))
                                                 for p in pts],
                                      "command": "python bench/fusion_tradeoff.py"})
    plot(pts, os.path.join(RESULTS, "fusion_tradeoff.png"))
    met = sorted({(p["label"], ROWS[p["row"]][0]) for p in pts if p["meets_goal"]})
    lines = ["# Accuracy against consistency of issue 19's serving variants", "",
             "`python bench/fusion_tradeoff.py` (no new run: stored `result.json` of the runs each addendum of "
             "`docs/dev_set_rule.md` names; the oracle from the main development suite). ΔmIoU / ΔmVC8 in points "
             "against the frame-wise ISS of the same run folder. Goals: stride 1 ΔmIoU >= 0 and ΔmVC8 >= +5; strides 2 and 4 ΔmIoU >= -0.3 and ΔmVC8 >= +3. "
             "`-`: the run has no such row.", "", "![trade-off](fusion_tradeoff.png)", ""] + table(pts) + [
             "", "Goals met: " + ("; ".join(f"{a} at {b}" for a, b in met) if met else "none") + "."]
    write_markdown("fusion_tradeoff", lines)


if __name__ == "__main__":
    main()
