"""``ditta compare``: the methods on a labelled clip, offline and through the ROS node, in one table.

    ditta compare CLIP --model M --label-map L --out DIR [--methods iss ditta] [--no-route]

* offline: ``ditta eval CLIP --method <m>`` for each method (W2F protocol,
  :func:`ditta_ros.tools.evaluate.run_eval`), results under ``DIR/<method>/``;
* ROS route (unless ``--no-route``): ``ditta bag make CLIP`` -> ``ditta_node`` over
  real DDS (unhurried replay, :mod:`ditta_ros.tools.route`) -> ``ditta bag record`` ->
  ``ditta bag eval`` with the same warm-up frames left out, under ``DIR/route/``.

Writes ``DIR/compare.json`` and ``DIR/compare.md`` (the printed table): mIoU, wIoU,
mVC8, mVC16 (percent), fps and adaptation seconds per row.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Dict, List, Mapping, Optional, Sequence

from ..protocol import DEFAULT_WARMUP_RATIO

KEYS = ("mIoU", "wIoU", "mVC8", "mVC16")


def run_compare(clip: str, out: str, model: str, label_map: Optional[str], methods: Sequence[str] = ("iss", "ditta"),
                route: bool = True, warmup_ratio: int = DEFAULT_WARMUP_RATIO, max_frames: Optional[int] = None,
                method_options: Optional[Mapping[str, Mapping[str, object]]] = None,
                node_params: Optional[Dict[str, object]] = None, progress: bool = True) -> List[Dict[str, object]]:
    """Run the comparison and write ``compare.{json,md}`` under ``out``; returns the rows.

    ``method_options``: per method name, its :func:`~ditta_ros.tools.methods.make_method` options
    (e.g. ``{"iss-stream": {"runtime": RuntimeOptions(backend="auto")}}``); a method not named runs with its defaults
    (``ditta``: ``progress`` follows ``progress``).

    Raises:
        ValueError: options for a method not compared, an unknown method, or as
            :func:`ditta_ros.tools.evaluate.run_eval`; TypeError: an option the method does not take.
        FileNotFoundError: the clip or the model weights are missing.
        RuntimeError: the route failed.
    """
    from ..data import open_clip
    from .evaluate import prepare_eval, run_eval

    method_options = method_options or {}
    stray = sorted(set(method_options) - set(methods))
    if stray:
        raise ValueError(f"options for {', '.join(stray)}, not among the compared methods {', '.join(methods)}")
    rows: List[Dict[str, object]] = []
    for method in methods:
        mdir = os.path.join(out, method)
        opts = dict(method_options.get(method, {}))
        if method == "ditta":
            opts.setdefault("progress", progress)
        setup = prepare_eval(clip, model, label_map, max_frames or None)
        run_eval(setup, method, mdir, opts, warmup_ratio=warmup_ratio, overlays=0, progress=progress)
        with open(os.path.join(mdir, "result.json")) as f:
            res = json.load(f)
        rows.append({"row": f"{method} (ditta eval)", **{k: res[k] for k in KEYS}, "fps": res.get("fps"),
                     "adapt_seconds": res.get("adapt_seconds"), "frames": res.get("eval_frames")})
    if route:
        rows.append(route_eval(clip, os.path.join(out, "route"), model, label_map, warmup_ratio, max_frames,
                               node_params or {}, progress=progress))
    with open(os.path.join(out, "compare.json"), "w") as f:
        json.dump({"clip": os.path.abspath(clip), "model": model, "label_map": label_map,
                   "warmup_ratio": warmup_ratio, "clip_name": open_clip(clip).name, "rows": rows}, f, indent=2)
    with open(os.path.join(out, "compare.md"), "w") as f:
        f.write(format_table(rows) + "\n")
    return rows


def route_eval(clip: str, rdir: str, model: str, label_map: Optional[str],
               warmup_ratio: int = DEFAULT_WARMUP_RATIO, max_frames: Optional[int] = None,
               node_params: Optional[Dict[str, object]] = None, rate: float = 1.0,
               progress: bool = False) -> Dict[str, object]:
    """The ROS route on a labelled clip, scored like ``ditta eval`` (W2F: warm-up frames left out).

    ``rdir`` (replaced if it exists) receives ``clip_bag/``, ``labels_bag/``,
    ``node.log``, ``eval/result.json``. Returns the table row plus ``latency_ms``,
    ``node`` (final status), ``published``, ``warmup_frames`` and ``wall_seconds``;
    its ``fps`` is 1000 / median latency (lockstep: one frame at a time).
    """
    from .bag import eval_bag, make_bag
    from ..data import open_clip
    from ..protocol import warmup_length
    from ..resources import local_ros_env
    from .route import run_route

    n = len(open_clip(clip, max_frames))
    n_warm = warmup_length(n, warmup_ratio)
    if os.path.isdir(rdir):
        shutil.rmtree(rdir)
    os.makedirs(rdir)
    src, rec = os.path.join(rdir, "clip_bag"), os.path.join(rdir, "labels_bag")
    make_bag(clip, src, max_frames=max_frames, progress=False)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = local_ros_env(os.path.join(rdir, "ros_log"), pythonpath=package_root)
    params = {"model": model, "warmup_frames": n_warm, "publish_color": False,
              "export_dir": os.path.join(rdir, "export"), "checkpoint_dir": os.path.join(rdir, "adapted"),
              **(node_params or {})}
    adapting = params.get("adapt", True) not in (False, "false")  # without adaptation there is no STREAMING to wait for
    r = run_route(src, rec, env, os.path.join(rdir, "node.log"), node_params=params,
                  pause_after=n_warm if adapting else 0, rate=rate,
                  progress=progress)
    res = eval_bag(rec, src, os.path.join(rdir, "eval"), label_map=label_map, skip_first=n_warm)
    st = r["node_status"]
    lat = res.get("latency_ms") or {}
    metrics = {k: None if res[k] is None or res[k] != res[k] else res[k] for k in KEYS}  # NaN -> None, as in result.json
    name = "ditta_node route (bag -> node -> record)" + ("" if adapting else ", adapt off")
    return {"row": name, **metrics,
            "fps": 1000.0 / lat["median"] if lat.get("median") else None,
            "adapt_seconds": (st.get("last_adaptation") or {}).get("adapt_seconds"), "frames": res["matched_frames"],
            "missing_frames": res["missing_frames"], "latency_ms": lat, "node": st, "published": r["published"],
            "warmup_frames": n_warm, "wall_seconds": r["wall_seconds"]}


def format_table(rows: Sequence[Dict[str, object]]) -> str:
    """Markdown table of the rows (metrics in percent as ``ditta eval`` reports them)."""
    def f(v, d=1):
        return "-" if v is None else f"{v:.{d}f}"

    lines = ["| run | mIoU | wIoU | mVC8 | mVC16 | fps | adaptation s | frames |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['row']} | " + " | ".join(f(r[k]) for k in KEYS) + f" | {f(r['fps'], 2)} | "
              f"{f(r['adapt_seconds'])} | {r['frames']} |" for r in rows]
    return "\n".join(lines)
