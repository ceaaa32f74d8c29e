"""Benchmark: does running the stateless part of the served graph on two OpenVINO streams pay on this CPU?
(issue 20, item 1). The ISS part of every served graph (backbone, decoder, classifier) needs nothing from the
previous frame; only the temporal branch and the fusion do. So frame t+1's ISS part may run while frame t is
fused, on a second OpenVINO stream. Whether that raises the frames per second depends on the CPU: two streams
of one thread each against one request on two threads.

Variants, on the first frames of a clip, interleaved round by round so that load on the machine hits them alike:

* ``plain, 1 request``: the plain-ISS graph (the warm-up's and ``adapt: false``'s), one synchronous request
  with OpenVINO's LATENCY hint: today's serving path;
* ``plain, 2 streams``: the same graph, THROUGHPUT hint with 2 streams, two requests in flight (no state, so
  this is the ceiling of what streams give);
* ``flow, 1 request``: the served graph of the ``select`` preset (the flow branch, :class:`~ditta_ros.gates.FlowWarp`
  moving the state), frame by frame: today's serving path;
* ``flow, 1 request, 1 thread``: today's path with the node's ``openvino_threads: 1`` (what a node on shared
  cores may run instead, ``bench/live_speed.py``); reported, not part of the rule;
* ``flow split, 2 streams``: that graph cut where the ISS logits leave the classifier
  (:func:`ditta_ros.runtime.openvino.split_graph`: OpenVINO graph surgery on one export, so both parts compute
  exactly what the whole graph does): the stateless part on 2 streams with up
  to 3 frames in flight, the flow warp and the fusion part in frame order on one request.

Per variant: frames per second (wall time over the frames), and label agreement with its 1-request
counterpart (share of identical frames and of identical pixels).

Rule fixed before the first run: the node gets the pipelined path only where ``flow split, 2 streams`` reaches
at least 1.3x the frames per second of ``flow, 1 request`` with identical labels on every frame; otherwise the
measured reason is recorded here and the node keeps one request.

    python bench/streams_probe.py [CLIP] [--model M] [--frames 40] [--rounds 3] [--precision f32]
    python bench/streams_probe.py --load busy    # another process spins on one core meanwhile
    # writes bench/results/streams_probe_<model>[_f32][_onednn-<isa>][_busy].{json,md}
    # an AVX2-only CPU emulated on a newer one (the kernels capped, clock and caches this machine's):
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 OPENCV_CPU_DISABLE=AVX512-SKX,AVX512-CLX,AVX_VNNI \\
        python bench/streams_probe.py --precision f32
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

#: the rule fixed before the first run (module docstring)
MIN_SPEEDUP = 1.3
#: frames in flight in the split pipeline (two on the streams while one is fused)
DEPTH = 3


def _state_feed(state, names, shapes, hw):
    """The fusion part's state inputs from a FlowWarp state (``None``: a stream's first frame, zeros)."""
    import numpy as np

    if state is None:
        return {n: np.zeros(shapes[n], np.float32) for n in names}
    by_name = {"feat_prev": state[0], "logits_prev": state[1], "has_prev": state[2]}
    return {n: np.ascontiguousarray(by_name[n], np.float32) for n in names}


def run_flow_single(compiled, frames, hw):
    """Today's path: the whole flow graph, frame by frame, the state moved by the flow."""
    import numpy as np

    from ditta_ros.gates import FlowWarp

    names = [i.get_any_name() for i in compiled.inputs if i.get_any_name() != "image"]
    shapes = {i.get_any_name(): tuple(i.shape) for i in compiled.inputs}
    request, warp, state, out = compiled.create_infer_request(), FlowWarp(), None, []
    for f in frames:
        moved = warp(f, state)
        res = request.infer({"image": f, **_state_feed(moved, names, shapes, hw)})
        out.append(np.array(res["labels"]))
        state = (np.array(res["feat"]), np.array(res["logits"]), np.ones(hw, np.float32))
    return out


def run_flow_split(stateless, fusion, frames, hw):
    """The pipelined path: the stateless part of up to :data:`DEPTH` frames in flight on the streams, the
    flow warp and the fusion part in frame order."""
    import numpy as np
    import openvino as ov

    from ditta_ros.gates import FlowWarp

    names = [i.get_any_name() for i in fusion.inputs if i.get_any_name() != "plain_logits"]
    shapes = {i.get_any_name(): tuple(i.shape) for i in fusion.inputs}
    done = {}
    queue = ov.AsyncInferQueue(stateless, 2)
    queue.set_callback(lambda req, k: done.__setitem__(k, tuple(np.array(req.get_tensor(n).data)
                                                                for n in ("plain_logits", "feat", "logits"))))
    request, warp, state, out = fusion.create_infer_request(), FlowWarp(), None, []

    def finish(k):
        nonlocal state
        while k not in done:
            time.sleep(0.0005)
        plain, feat, logits = done.pop(k)
        moved = warp(frames[k], state)
        res = request.infer({"plain_logits": plain, **_state_feed(moved, names, shapes, hw)})
        out.append(np.array(res["labels"]))
        state = (feat, logits, np.ones(hw, np.float32))

    for k, f in enumerate(frames):
        queue.start_async({"image": f}, k)
        if k >= DEPTH - 1:
            finish(k - DEPTH + 1)
    for k in range(max(0, len(frames) - DEPTH + 1), len(frames)):
        finish(k)
    queue.wait_all()
    return out


def run_plain(compiled, frames, streams):
    """The plain graph over the frames: one synchronous request, or ``streams`` requests in flight."""
    import numpy as np
    import openvino as ov

    if streams == 1:
        request = compiled.create_infer_request()
        return [np.array(request.infer({"image": f})["labels"]) for f in frames]
    out = {}
    queue = ov.AsyncInferQueue(compiled, streams)
    queue.set_callback(lambda req, k: out.__setitem__(k, np.array(req.get_tensor("labels").data)))
    for k, f in enumerate(frames):
        queue.start_async({"image": f}, k)
    queue.wait_all()
    return [out[k] for k in range(len(frames))]


def main() -> None:
    import numpy as np
    import openvino as ov

    from common import (cap_prefix, describe_machine, first_frames, isa_cap_suffix, machine, one_core_busy,
                        served_exports, speed_parser, write_markdown, write_results)
    from ditta_ros.runtime.openvino import compiled_precision, precision_config, read_graph, split_graph

    p = speed_parser(__doc__, frames=40, rounds=3)
    p.add_argument("--precision", choices=["auto", "f32"], default="auto",
                   help="OpenVINO inference precision: the CPU's own choice (bf16 where it has bf16 units) or f32, "
                        "what a CPU without bf16 units (AVX2 only) runs")
    p.add_argument("--load", choices=["quiet", "busy"], default="quiet",
                   help="busy: another process spins on one core while the variants run (issue 20's condition)")
    args = p.parse_args()

    clip, frames, _ = first_frames(args.clip, args.frames)
    hw = frames[0].shape[:2]
    core = ov.Core()
    forced = precision_config(args.precision)
    latency = {"PERFORMANCE_HINT": "LATENCY", **forced}
    throughput = {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": "2", **forced}
    with tempfile.TemporaryDirectory() as tmp:
        plain_path, flow_path = served_exports(args.model, hw, tmp, plain_logits=True)
        plain_graph, flow_graph = read_graph(core, plain_path), read_graph(core, flow_path)  # as the node serves them
        stateless, fusion = split_graph(read_graph(core, flow_path))
        compiled = {"plain": core.compile_model(plain_graph, "CPU", latency),
                    "plain2": core.compile_model(plain_graph, "CPU", throughput),
                    "flow": core.compile_model(flow_graph, "CPU", latency),
                    "flow1": core.compile_model(flow_graph, "CPU", {**latency, "INFERENCE_NUM_THREADS": 1}),
                    "stateless2": core.compile_model(stateless, "CPU", throughput),
                    "fusion": core.compile_model(fusion, "CPU", latency)}
    precision = compiled_precision(compiled["plain"])
    variants = {
        "plain, 1 request": lambda: run_plain(compiled["plain"], frames, 1),
        "plain, 2 streams": lambda: run_plain(compiled["plain2"], frames, 2),
        "flow, 1 request": lambda: run_flow_single(compiled["flow"], frames, hw),
        "flow, 1 request, 1 thread": lambda: run_flow_single(compiled["flow1"], frames, hw),
        "flow split, 2 streams": lambda: run_flow_split(compiled["stateless2"], compiled["fusion"], frames, hw),
    }
    reference = {"plain, 2 streams": "plain, 1 request", "flow, 1 request, 1 thread": "flow, 1 request",
                 "flow split, 2 streams": "flow, 1 request"}
    seconds = {k: [] for k in variants}
    labels = {}
    with one_core_busy(args.load == "busy"):
        for run in variants.values():  # warm-up (first-inference allocations)
            run()
        for _ in range(args.rounds):
            for k, run in variants.items():
                t0 = time.perf_counter()
                labels[k] = run()
                seconds[k].append(time.perf_counter() - t0)
    rows = []
    for k in variants:
        fps = len(frames) / float(np.median(seconds[k]))
        row = {"variant": k, "fps": round(fps, 2)}
        ref = reference.get(k)
        if ref:
            same = [bool(np.array_equal(a, b)) for a, b in zip(labels[k], labels[ref])]
            row.update(identical_frames=int(sum(same)),
                       pixel_agreement=round(float(np.mean([(a == b).mean() for a, b in zip(labels[k], labels[ref])])), 6))
        rows.append(row)
    fps = {r["variant"]: r["fps"] for r in rows}
    for r in rows:
        ref = reference.get(r["variant"])
        r["speedup"] = round(r["fps"] / fps[ref], 3) if ref else 1.0
    split = next(r for r in rows if r["variant"] == "flow split, 2 streams")
    passed = split["speedup"] >= MIN_SPEEDUP and split["identical_frames"] == len(frames)
    m = machine()
    cmd = cap_prefix() + "python bench/streams_probe.py " + " ".join(sys.argv[1:])
    payload = {"model": args.model, "clip": clip.name, "frame_hw": list(hw), "frames": len(frames),
               "rounds": args.rounds, "load": args.load, "precision": precision, "depth": DEPTH,
               "rule": {"min_speedup": MIN_SPEEDUP},
               "passed": passed, "rows": rows, "machine": m, "command": cmd}
    name = (f"streams_probe_{args.model}" + ("" if args.precision == "auto" else f"_{args.precision}")
            + isa_cap_suffix() + ("_busy" if args.load == "busy" else ""))
    write_results(name, payload)
    lines = [f"# Two OpenVINO streams for the stateless part: {args.model} ({describe_machine(m)})", "",
             f"`{cmd}`", "",
             f"{clip.name}, first {len(frames)} frames ({hw[1]}x{hw[0]}); OpenVINO CPU, precision {precision}; "
             f"median of {args.rounds} interleaved rounds"
             + (", another process spinning on one core meanwhile" if args.load == "busy" else "")
             + ". Agreement: with the 1-request variant of the same graph.",
             "", "| variant | frames/s | speed-up | identical frames | pixel agreement |", "|---|---|---|---|---|"]
    for r in rows:
        agree = (f"{r['identical_frames']}/{len(frames)} | {100 * r['pixel_agreement']:.4f} %"
                 if "identical_frames" in r else "- | -")
        lines.append(f"| {r['variant']} | {r['fps']:.2f} | {r['speedup']:.2f}x | {agree} |")
    lines += ["", f"`flow split, 2 streams` against `flow, 1 request, 1 thread` (the node's `openvino_threads: 1`): "
              f"{split['fps'] / fps['flow, 1 request, 1 thread']:.2f}x."]
    lines += ["", f"Rule fixed beforehand: the node gets the pipelined path where `flow split, 2 streams` reaches "
              f"{MIN_SPEEDUP}x `flow, 1 request` with identical labels on every frame. "
              + ("Passed on this CPU." if passed else
                 f"Not passed on this CPU ({split['speedup']:.2f}x): the node keeps one request.")]
    write_markdown(name, lines)


if __name__ == "__main__":
    main()
