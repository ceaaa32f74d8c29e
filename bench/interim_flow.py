"""Benchmark: a live camera while the node's first adaptation runs, with and without the interim
(``flow_while_adapting``: the ISS model with the flow branch serves until the adaptation ends), and with
other node parameters that share the cores between serving and adapting (``--variants``).

The node's frame loop without ROS (:class:`~ditta_ros.live.loop.FrameLoop` over a
:class:`~ditta_ros.live.LivePipeline` with the node's defaults: ``select``, backend ``auto``, the real
teacher) is fed the frames of a clip at the clip's rate by a camera thread, played back and forth, that
never waits: the loop takes the newest frame and drops the rest, as the node does. It runs until the
adaptation has ended and ``--after`` seconds more. Each run starts with empty export and engine caches
(the interim's export and compile are part of what it costs). The runs cannot be interleaved (one
adaptation each, minutes long): they run one after the other, so compare them only on a quiet machine.
A variant is a comma-separated list of node parameters (``key=value``, as ``ditta eval``'s method options)
applied to :class:`~ditta_ros.live.LiveConfig`.

Reported per run: seconds from the first frame to the end of the adaptation (the status'
``last_adaptation``), and over the frames the loop answered while the adaptation ran: how many, by
model (``iss`` / ``iss-flow``), the median gap between their stamps, the interim's fused share and the
label flips between consecutive answered frames (:func:`ditta_ros.metrics.label_flips`).

    python bench/interim_flow.py [CLIP] [--after 10] [--variants flow_while_adapting=true ...]
    # writes bench/results/interim_flow.{json,md}
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def camera(frames, fps: float, loop, stop: threading.Event) -> None:
    """Offer ``frames`` back and forth at ``fps`` (stamps in stream seconds) until ``stop``."""
    order = list(range(len(frames))) + list(range(len(frames) - 2, 0, -1))
    t0, i = time.monotonic(), 0
    while not stop.is_set():
        delay = t0 + i / fps - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        loop.offer((frames[order[i % len(order)]], i / fps))
        i += 1


def parse_variant(text: str):
    """``"k=v,k2=v2"`` -> ``{k: v}``, each value read as YAML (as ``ditta suite`` reads its overrides) and the
    whole checked as node parameters (:func:`ditta_ros.params.resolve`).

    Raises:
        ValueError: an item that is not ``key=value``; :class:`~ditta_ros.params.ParameterError`: an unknown
            parameter or a bad value.
    """
    import yaml

    from ditta_ros.params import resolve

    out = {}
    for item in filter(None, text.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"{item!r} in {text!r} is not key=value")
        out[key.strip()] = yaml.safe_load(value)
    resolve(out, check_files=False)
    return out


def run(frames, fps: float, overrides, after: float, model: str):
    import numpy as np

    from ditta_ros.live import LivePipeline, Phase
    from ditta_ros.params import resolve
    from ditta_ros.live.loop import FrameLoop
    from ditta_ros.metrics import label_flips

    with tempfile.TemporaryDirectory() as tmp:
        cfg, _ = resolve({"model": model, "checkpoint_dir": "", "export_dir": os.path.join(tmp, "export"),
                          "engine_cache": os.path.join(tmp, "engines"), **overrides}, check_files=False)
        live = LivePipeline(cfg)
        answered = []  # (stamp, source, phase, labels)
        stats = {}

        def publish(msg, labels, conf, source):
            answered.append((msg[1], source, live.phase, labels))
            if source == "iss-flow":
                with live.serving._lock:  # the adaptation may have replaced the interim since this frame
                    frozen, interim = live.serving.frozen, live.serving.interim
                if interim:
                    stats["interim"] = frozen.stats  # the interim's own counters, not the adapted model's

        loop = FrameLoop(live, publish, decode=lambda msg: msg)
        stop = threading.Event()
        threads = [threading.Thread(target=camera, args=(frames, fps, loop, stop), daemon=True),
                   threading.Thread(target=loop.run, daemon=True)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        while live.phase in (Phase.WARMUP, Phase.ADAPTING, Phase.EXPORTING) and time.monotonic() - t0 < 1800:
            time.sleep(0.2)
        t_end = time.monotonic() - t0
        time.sleep(after)
        stop.set()
        loop.stop()
        for t in threads:
            t.join(10)
        adapting = [a for a in answered if a[2] in (Phase.ADAPTING, Phase.EXPORTING)]
        by_model = {}
        for a in adapting:
            by_model[a[1]] = by_model.get(a[1], 0) + 1
        gaps = np.diff([a[0] for a in adapting])
        flips = label_flips([a[3] for a in adapting])[1:] if len(adapting) > 1 else np.array([])
        s = stats.get("interim")
        out = {"variant": ",".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                                   for k, v in overrides.items()),
               "flow_while_adapting": cfg.flow_while_adapting, "state": live.phase.value,
               "selected": live.last_adapt.get("selected"), "seconds_to_end_of_adaptation": round(t_end, 1),
               "adaptation": {k: live.last_adapt.get(k) for k in ("total_seconds", "teacher_seconds",
                                                                   "adapt_seconds")},
               "answered_while_adapting": len(adapting), "by_model": by_model,
               "gap_ms_median": round(1000 * float(np.median(gaps)), 1) if len(gaps) else None,
               "interim_fused_share": round(s.fused / max(1, s.frames), 4) if s is not None else None,
               "flips_while_adapting": round(float(np.mean(flips)), 5) if len(flips) else None,
               "frames_in": live.counters.frames_in, "dropped": live.counters.dropped}
        live.close()
        return out


def main() -> None:
    from common import clip_parser, describe_machine, machine, write_markdown, write_results
    from ditta_ros.data import open_clip

    p = clip_parser(__doc__)
    p.add_argument("--model", default="espnetv2-s2.0-cityscapes-1024x512")
    p.add_argument("--after", type=float, default=10.0, help="seconds of streaming after the adaptation ended")
    p.add_argument("--name", default="", help="results file suffix (interim_flow_<name>)")
    p.add_argument("--variants", nargs="+", default=["flow_while_adapting=true", "flow_while_adapting=false"],
                   help="node parameters per run, e.g. flow_while_adapting=true,openvino_threads=1")
    args = p.parse_args()
    clip = open_clip(args.clip)
    frames = [clip.frame(i) for i in range(len(clip))]
    fps = float(clip.fps)
    m = machine()
    variants = [parse_variant(v) for v in args.variants]  # all checked before the first run
    rows = [run(frames, fps, v, args.after, args.model) for v in variants]
    name = "interim_flow" if not args.name else f"interim_flow_{args.name}"
    write_results(name, {"machine": m, "clip": args.clip, "fps": fps, "rows": rows,
                                   "command": "python bench/interim_flow.py " + " ".join(sys.argv[1:])})
    lines = [f"# A live camera while the first adaptation runs: {args.model} ({describe_machine(m)})", "",
             f"`python bench/interim_flow.py {' '.join(sys.argv[1:])}`", "",
             f"{os.path.basename(os.path.normpath(args.clip))} ({len(frames)} frames, back and forth) offered at "
             f"{fps:g} Hz to the node's frame loop (no ROS; node defaults: `select`, backend auto); empty export "
             "and engine caches per run; runs one after the other (not interleaved).", "",
             "| variant | first frame to end of adaptation s | adaptation s (teacher) | selected | "
             "answered while adapting | by model | gap median ms | interim fused share | label flips while "
             "adapting |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a, flips = r["adaptation"], r["flips_while_adapting"]
        lines.append(f"| {r['variant']} | {r['seconds_to_end_of_adaptation']} | "
                     f"{a['total_seconds']} ({a['teacher_seconds']}) | {r['selected']} | "
                     f"{r['answered_while_adapting']} | "
                     + ", ".join(f"{k} {v}" for k, v in sorted(r["by_model"].items()))
                     + f" | {r['gap_ms_median']} | {r['interim_fused_share']} | "
                     + ("-" if flips is None else f"{100 * flips:.2f} %") + " |")
    write_markdown(name, lines)


if __name__ == "__main__":
    main()
