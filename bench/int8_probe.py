"""Benchmark: does int8 pay on this CPU? The served plain-ISS graph (the node's warm-up, ``adapt: false``
and fallback graph, and the backbone of every adapted one) on OpenVINO's CPU plugin in f32, in its own
default precision (bf16 where the CPU has bf16/AMX units) and quantised to int8 by NNCF post-training
quantisation calibrated on the first frames of a clip (what the node's warm-up would offer), with the
defaults and with the options that usually help depthwise models (``MIXED`` preset, full bias
correction). Per variant: speed (median and p95 ms per frame, one synchronous request, the variants
interleaved round by round so that load on the machine hits them alike) and label agreement with f32
on frames after the calibration ones. The CPU's ISA flags head the results: the answer differs between
AVX2-only, VNNI and AMX CPUs.

Rule fixed before the first run (issue 20, item 3): int8 would be worth offering only where it is at
least 1.3x faster than the device's default precision and its labels agree with f32 on >= 99 % of the
pixels; otherwise the reason is recorded here and nothing changes in the node.

    pip install nncf   # not a dependency of the package
    python bench/int8_probe.py [CLIP] [--model M] [--calib 10] [--frames 30] [--rounds 3]
    # writes bench/results/int8_probe_<model>.{json,md}
"""

from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

#: the rule fixed before the first run (module docstring)
MIN_SPEEDUP, MIN_AGREEMENT = 1.3, 0.99


def _variants(onnx_path, calib):
    """``{name: compiled model}``: f32, the device default, int8 (NNCF defaults), int8 (MIXED, full bias
    correction)."""
    import nncf
    import openvino as ov

    from ditta_ros.runtime.openvino import precision_config, read_graph

    core = ov.Core()
    model = read_graph(core, onnx_path)  # as the node serves it
    hint = {"PERFORMANCE_HINT": "LATENCY", **precision_config("auto")}  # f32 under an ISA cap below bf16
    data = nncf.Dataset(calib, lambda f: {"image": f})
    out = {"f32": core.compile_model(model, "CPU", {**hint, "INFERENCE_PRECISION_HINT": "f32"}),
           "default": core.compile_model(model, "CPU", hint)}
    out["int8"] = core.compile_model(nncf.quantize(model, data, subset_size=len(calib)), "CPU", hint)
    out["int8-mixed"] = core.compile_model(
        nncf.quantize(model, data, subset_size=len(calib), preset=nncf.QuantizationPreset.MIXED,
                      fast_bias_correction=False), "CPU", hint)
    return out


def main() -> None:
    import numpy as np

    from common import (DEFAULT_CLIP, RESULTS, cap_prefix, clip_parser, describe_machine, first_frames, machine,
                        time_fn, write_results)
    from ditta_ros.adapt import DiTTANet
    from ditta_ros.iss import load_model
    from ditta_ros.runtime.export_cache import cached_export
    from ditta_ros.runtime.openvino import compiled_precision

    p = clip_parser(__doc__)
    p.set_defaults(clip=DEFAULT_CLIP)
    p.add_argument("--model", default="espnetv2-s2.0-cityscapes-1024x512")
    p.add_argument("--calib", type=int, default=10, help="calibration frames (the clip's first)")
    p.add_argument("--frames", type=int, default=30, help="frames after them for agreement and timing")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--name", default="", help="results file stem (default: int8_probe_<model>; name another "
                                              "CPU's run, e.g. int8_probe_<model>_epyc)")
    args = p.parse_args()

    clip, frames, _ = first_frames(args.clip, args.calib + args.frames)
    calib, test = frames[:args.calib], frames[args.calib:]
    model, info = load_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = cached_export(DiTTANet(model), frames[0].shape[:2], 0.0, tmp, info.name)
        compiled = _variants(onnx_path, calib)
    precision = {k: compiled_precision(c) for k, c in compiled.items()}  # as the OpenVINO backend reports it
    labels = {k: [np.asarray(c({"image": f})["labels"]) for f in test] for k, c in compiled.items()}
    agree = {k: float(np.mean([(a == b).mean() for a, b in zip(v, labels["f32"])])) for k, v in labels.items()}
    times = {k: [] for k in compiled}
    for _ in range(args.rounds):
        for k, c in compiled.items():
            it = iter(test * 100)
            times[k].append(time_fn(lambda: c({"image": next(it)}), warmup=2, iters=len(test)))
    rows = []
    for k in compiled:
        med = float(np.median([t["median_ms"] for t in times[k]]))
        p95 = float(np.median([t["p95_ms"] for t in times[k]]))
        rows.append({"variant": k, "precision": precision[k], "median_ms": round(med, 2), "p95_ms": round(p95, 2),
                     "agreement_with_f32": round(agree[k], 5)})
    base = next(r for r in rows if r["variant"] == "default")["median_ms"]
    for r in rows:
        r["speedup_over_default"] = round(base / r["median_ms"], 3)
        r["passes_rule"] = (r["variant"].startswith("int8") and r["speedup_over_default"] >= MIN_SPEEDUP
                            and r["agreement_with_f32"] >= MIN_AGREEMENT)
    m = machine()
    cmd = cap_prefix() + "python bench/int8_probe.py " + " ".join(sys.argv[1:])
    payload = {"model": args.model, "clip": clip.name, "frame_hw": list(frames[0].shape[:2]), "calib": len(calib),
               "test_frames": len(test), "rounds": args.rounds, "rule": {"min_speedup": MIN_SPEEDUP,
                                                                            "min_agreement": MIN_AGREEMENT},
               "rows": rows, "machine": m, "command": cmd}
    name = args.name or f"int8_probe_{args.model}"
    write_results(name, payload)
    ok = [r["variant"] for r in rows if r["passes_rule"]]
    lines = [f"# int8 on the CPU: the plain-ISS graph of {args.model} ({describe_machine(m)})", "", f"`{cmd}`", "",
             f"{clip.name}, {frames[0].shape[1]}x{frames[0].shape[0]} frames; NNCF calibrated on the first "
             f"{len(calib)}, agreement and speed on the next {len(test)}; {args.rounds} interleaved rounds, one "
             "synchronous request (LATENCY hint). OpenVINO precision: its hint for the layers not quantised "
             "(int8 variants run their quantised layers in int8).", "",
             "| variant | OpenVINO precision | median ms | p95 ms | speed-up over default | label agreement with f32 |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['precision']} | {r['median_ms']:.1f} | {r['p95_ms']:.1f} | "
              f"{r['speedup_over_default']:.2f}x | {100 * r['agreement_with_f32']:.2f} % |" for r in rows]
    lines += ["", f"Rule fixed beforehand: int8 at least {MIN_SPEEDUP}x the default precision's speed with labels "
              f"agreeing with f32 on >= {100 * MIN_AGREEMENT:.0f} % of the pixels. "
              + (f"Passed: {', '.join(ok)}." if ok else "No int8 variant passes on this CPU: the node keeps the "
                 "device's default precision.")]
    with open(os.path.join(RESULTS, name + ".md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
