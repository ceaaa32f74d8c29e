"""Benchmark: the exported graph on OpenVINO's CPU plugin as ``torch.onnx`` writes it against the graph every
OpenVINO backend now compiles (:func:`ditta_ros.runtime.openvino.read_graph`: PReLU slopes given their
input's rank, :func:`~ditta_ros.runtime.openvino.channel_slopes`).

With ``[C, 1, 1]`` slopes the CPU plugin runs each fused BatchNorm + PReLU kernel channels-first between
channels-last convolutions, fenced by layout reorders; with ``[1, C, 1, 1]`` slopes it runs channels-last.
For each export of the model at the clip's frame size (the plain ISS graph, ``tau = 0``; the ``select``
preset's graph with the flow branch) and each precision, both compilations run the clip's first frames in
one process, interleaved round by round. Reported: ms per inference (median over rounds of the mean over the
frames), the reorder nodes in OpenVINO's runtime graph and their share of the inference time (a third
compilation with ``PERF_COUNT``), and whether labels and confidence are bit-identical on every frame (the state
inputs at zero, as on a stream's first frame); beside the rule, with a random previous state, the frames with identical labels and the largest confidence difference.

Rule written before the first run: :func:`read_graph` serves when its outputs are bit-identical to the
export's on every frame and no row is slower (ratio >= 1.0).

    python bench/prelu_slopes.py [CLIP] [--frames 30] [--rounds 5] [--precisions auto f32]
    # writes bench/results/prelu_slopes[_onednn-<isa>].{json,md}
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def reorders(core, model, config, feed):
    """``(reorder nodes, their share of the summed node time)`` of ``model`` compiled with ``PERF_COUNT``."""
    compiled = core.compile_model(model, "CPU", {**config, "PERF_COUNT": "YES"})
    request = compiled.create_infer_request()
    for _ in range(3):
        request.infer(feed)
    total = reorder = 0.0
    for info in request.profiling_info:
        ms = info.real_time.total_seconds()
        total += ms
        reorder += ms if info.node_type == "Reorder" else 0.0
    nodes = sum(op.get_rt_info()["layerType"].astype(str) == "Reorder"
                for op in compiled.get_runtime_model().get_ordered_ops())
    return int(nodes), reorder / total if total else 0.0


def main() -> None:
    import numpy as np
    import openvino as ov

    from common import (cap_prefix, describe_machine, first_frames, isa_cap_suffix, machine, served_exports,
                        speed_parser, write_markdown, write_results)
    from ditta_ros.runtime.openvino import compiled_precision, precision_config, read_graph

    p = speed_parser(__doc__, frames=30, rounds=5)
    p.add_argument("--precisions", nargs="+", choices=["auto", "f32"], default=["auto", "f32"])
    args = p.parse_args()

    clip, frames, _ = first_frames(args.clip, args.frames)
    hw = frames[0].shape[:2]
    core = ov.Core()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        plain, select = served_exports(args.model, hw, tmp)
        exports = {"plain ISS (tau 0)": plain, "select, flow fusion": select}
        for graph, path in exports.items():
            for precision in args.precisions:
                config = {"PERFORMANCE_HINT": "LATENCY", **precision_config(precision)}
                graphs = {"as exported": core.read_model(path), "read_graph": read_graph(core, path)}
                compiled = {k: core.compile_model(m, "CPU", config) for k, m in graphs.items()}
                requests = {k: c.create_infer_request() for k, c in compiled.items()}
                feeds = [{i.get_any_name(): (f if i.get_any_name() == "image" else
                                             np.zeros([d.get_length() for d in i.get_partial_shape()], np.float32))
                          for i in compiled["as exported"].inputs} for f in frames]
                for r in requests.values():
                    for _ in range(3):
                        r.infer(feeds[0])
                ms = {k: [] for k in requests}
                for _ in range(args.rounds):
                    for k, r in requests.items():
                        t0 = time.perf_counter()
                        for feed in feeds:
                            r.infer(feed)
                        ms[k].append(1000 * (time.perf_counter() - t0) / len(feeds))
                same, state_same, state_diff = 0, 0, 0.0
                rng = np.random.default_rng(0)
                for feed in feeds:
                    a, b = ({n: np.array(r.infer(feed)[n]) for n in ("labels", "confidence")} for r in requests.values())
                    same += int(all(np.array_equal(a[n], b[n]) for n in a))
                    # a random previous state where the graph takes one
                    fed = {k: v if k == "image" else rng.random(v.shape).astype(np.float32) for k, v in feed.items()}
                    a, b = ({n: np.array(r.infer(fed)[n]) for n in ("labels", "confidence")} for r in requests.values())
                    state_same += int(np.array_equal(a["labels"], b["labels"]))
                    state_diff = max(state_diff, float(np.abs(a["confidence"] - b["confidence"]).max()))
                row = {"graph": graph, "requested": precision,
                       "precision": compiled_precision(compiled["as exported"], precision),
                       "identical_frames": f"{same}/{len(feeds)}", "identical": same == len(feeds),
                       "stateful": len(feeds[0]) > 1}
                if row["stateful"]:
                    row["with_state"] = {"identical_label_frames": f"{state_same}/{len(feeds)}",
                                         "max_confidence_difference": state_diff}
                for k in graphs:
                    nodes, share = reorders(core, graphs[k], config, feeds[0])
                    row[k] = {"ms": round(float(np.median(ms[k])), 1), "reorders": nodes,
                              "reorder_share": round(share, 3)}
                row["speedup"] = round(row["as exported"]["ms"] / row["read_graph"]["ms"], 3)
                rows.append(row)
                print(row, flush=True)
    passed = all(r["identical"] and r["speedup"] >= 1.0 for r in rows)
    m = machine()
    cmd = cap_prefix() + "python bench/prelu_slopes.py " + " ".join(sys.argv[1:])
    name = "prelu_slopes" + isa_cap_suffix()
    write_results(name, {"model": args.model, "clip": clip.name, "frames": len(frames), "rounds": args.rounds,
                         "rows": rows, "passed": passed, "machine": m, "command": cmd})
    lines = [f"# PReLU slopes of the input's rank on OpenVINO's CPU plugin ({describe_machine(m)})", "",
             f"`{cmd}`", "",
             f"{args.model}, {clip.name}, {len(frames)} frames {hw[1]}x{hw[0]}, one request (LATENCY hint), "
             f"medians of {args.rounds} interleaved rounds. `as exported`: the ONNX as `torch.onnx` writes it "
             "(`[C, 1, 1]` slopes); `read_graph`: what the OpenVINO backends compile (`[1, C, 1, 1]`).", "",
             "| graph | precision (runs in) | as exported ms (reorders, share of time) | read_graph ms (reorders, share) | "
             "speed-up | identical outputs | with a previous state: identical labels, max confidence difference |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        a, b = r["as exported"], r["read_graph"]
        lines.append(f"| {r['graph']} | {r['requested']} ({r['precision']}) | {a['ms']:.1f} ({a['reorders']}, {100 * a['reorder_share']:.0f} %) "
                     f"| {b['ms']:.1f} ({b['reorders']}, {100 * b['reorder_share']:.0f} %) | {r['speedup']:.2f}x "
                     f"| {r['identical_frames']} | " + (f"{r['with_state']['identical_label_frames']}, "
                                                        f"{r['with_state']['max_confidence_difference']:.1e} |"
                                                        if r["stateful"] else "no state input |"))
    lines += ["", "Rule fixed beforehand (bit-identical labels and confidence on every frame, no row slower): "
              + ("passed." if passed else "NOT passed.")]
    write_markdown(name, lines)


if __name__ == "__main__":
    main()
