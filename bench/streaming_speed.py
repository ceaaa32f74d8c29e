"""Benchmark: the frozen streaming model against the plain ISS model and the official
two-frame formulation, per frame size and runtime backend.

Cases (each in a fresh process, so peak memory is its own), for frames of
480x360, 640x480 and 1024x512 (a real CamVid frame resized; the network input is
the model card's, 1024x512 for the default model):

* ``iss``: :class:`StreamingDiTTA` with ``tau = 0`` (preprocessing, ISS, resize,
  labels and confidence) -- the plain ISS model with the same outputs;
* ``ditta``: the frozen streaming DiTTA step (one backbone pass, state carried, every
  pixel allowed to use the previous frame: the add-on's worst case), as the ``default``
  preset serves it (``fusion="grid"``);
* ``ditta-frame``: the same with the add-on branch at frame resolution (``fusion="frame"``,
  the paper's and official code's form);
* ``two-frame``: the official formulation (frames t-1 and t through the backbone
  each step, windowed add-on), :func:`ditta_ros.streaming.two_frame_step`;
* ``two-frame-dense``: the same with the official dense ``HW x HW`` attention;
  skipped (with the memory it would need) when that exceeds ``--dense-limit-gib``;

on the ``torch`` backend (CPU, channels-last) and, for iss/ditta, ``openvino``
(its default precision: bf16 on CPUs with bf16 units, what the node runs),
``openvino-f32`` (float32: torch's labels) and ``onnxruntime``
(CPU EP). The exported cases also time the weight swap: a re-export of the
adapted network plus a new session (what the node does after adaptation). Every
backend is built by :func:`ditta_ros.runtime.streaming_backend`, as the node does.
On a CUDA machine the torch cases run on the GPU too (fp32 and fp16).

    python bench/streaming_speed.py [--iters 10] [--sizes 360x480 ...]
    # writes bench/results/streaming_speed.{json,md,png}
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

MODEL = "espnetv2-s2.0-cityscapes-1024x512"
SIZES = ["360x480", "480x640", "512x1024"]
IMPLS = ["iss", "ditta", "ditta-frame", "two-frame", "two-frame-dense"]
#: exported-graph backends (``openvino``: its default precision, bf16 on CPUs with bf16 units;
#: ``openvino-f32``: float32, torch's labels)
BACKENDS = ["openvino", "openvino-f32", "onnxruntime"]


def _frames(hw, frame_path):
    import cv2
    import numpy as np

    if os.path.isfile(frame_path):
        base = cv2.imread(frame_path)[:, :, ::-1]
    else:
        base = np.random.default_rng(0).integers(0, 255, (720, 960, 3), dtype=np.uint8)
    a = cv2.resize(np.ascontiguousarray(base), (hw[1], hw[0]), interpolation=cv2.INTER_AREA)
    b = np.ascontiguousarray(np.roll(a, 4, axis=1))  # a slightly moved second frame
    return a, b


def case(impl: str, backend: str, size: str, device: str, fp16: bool, iters: int, model_name: str,
         frame_path: str, dense_limit_gib: float) -> dict:
    import time

    import torch

    from common import peak_rss_mb, rss_mb, time_fn
    from ditta_ros.adapt import DiTTANet
    from ditta_ros.iss import load_model
    from ditta_ros.streaming import StreamingDiTTA, two_frame_step

    hw = tuple(int(v) for v in size.split("x"))
    iss, _ = load_model(model_name)
    net = DiTTANet(iss).eval()
    a, b = _frames(hw, frame_path)
    tau = 0.0 if impl == "iss" else 0.8
    fusion = "frame" if impl == "ditta-frame" else "grid"
    row = {"impl": impl, "backend": backend, "frame": f"{hw[1]}x{hw[0]}", "device": device,
           "precision": "fp16" if fp16 else "fp32"}
    base = rss_mb()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if backend != "torch":
        from ditta_ros.export import export_onnx
        from ditta_ros.runtime.openvino import OpenVINOBackend
        from ditta_ros.runtime.ort import OrtBackend

        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            path, _ = export_onnx(net, hw, tmp, "bench", tau=tau, fusion=fusion)
            t1 = time.perf_counter()
            runner = (OrtBackend(path) if backend == "onnxruntime"
                      else OpenVINOBackend(path, precision="f32" if backend == "openvino-f32" else "auto"))
            t2 = time.perf_counter()
            row["precision"] = getattr(runner, "precision", row["precision"])  # OpenVINO: what it runs in
            row["swap_export_s"], row["swap_session_s"] = round(t1 - t0, 3), round(t2 - t1, 3)
            _, _, state = runner.step(a)
            row["timing"] = time_fn(lambda: runner.step(b, state), iters=iters)
    else:
        model = StreamingDiTTA(net, hw, tau, fusion=fusion)
        if device == "cuda":
            model = model.cuda()
            if fp16:
                model.half()
        else:
            model.use_channels_last()
        ta, tb = (torch.from_numpy(f).to(device) for f in (a, b))
        if impl in ("iss", "ditta", "ditta-frame"):
            _, _, state = model.step(ta)
            fn = lambda: (model.step(tb, state), sync())  # noqa: E731
        else:
            dense = impl == "two-frame-dense"
            if dense:
                g = list(model.state_shapes["feat_prev"][2:])  # the add-on grid
                need = (g[0] * g[1]) ** 2 * 13 / 2**30  # mask (1 B) + 3 float32 HW x HW tensors
                row["dense_need_gib"] = round(need, 1)
                if need > dense_limit_gib:
                    row["skipped"] = (f"dense HWxHW attention on the {g[0]}x{g[1]} add-on grid needs ~{need:.0f} GiB "
                                      f"(> --dense-limit-gib {dense_limit_gib})")
                    return row
            fn = lambda: (two_frame_step(model, ta, tb, dense=dense), sync())  # noqa: E731
        row["timing"] = time_fn(fn, iters=iters)
    row["fps"] = round(1000 / row["timing"]["median_ms"], 3)
    row["extra_peak_mb"] = round(peak_rss_mb() - base, 1) if device == "cpu" else round(
        torch.cuda.max_memory_allocated() / 2**20, 1)
    return row



def interleaved(size: str, iters: int, model_name: str, frame_path: str) -> dict:
    """Every iss/ditta case of one frame size built in this one process and timed in
    interleaved rounds (one step of each case per round, median over ``iters`` rounds),
    so that the machine's load drifts hit every case alike: the ratios between cases
    (DiTTA / ISS, OpenVINO / torch) are far steadier than across separate processes."""
    import time

    import numpy as np
    import torch

    from ditta_ros.adapt import DiTTANet
    from ditta_ros.export import export_onnx
    from ditta_ros.iss import load_model
    from ditta_ros.runtime.openvino import OpenVINOBackend
    from ditta_ros.runtime.ort import OrtBackend
    from ditta_ros.runtime.torch_backend import TorchBackend
    from ditta_ros.streaming import StreamingDiTTA

    hw = tuple(int(v) for v in size.split("x"))
    iss, _ = load_model(model_name)
    net = DiTTANet(iss).eval()
    a, b = _frames(hw, frame_path)
    runners = {}
    with tempfile.TemporaryDirectory() as tmp:
        for impl in ("iss", "ditta", "ditta-frame"):
            tau, fusion = (0.0, "grid") if impl == "iss" else (0.8, "frame" if impl == "ditta-frame" else "grid")
            runners[(impl, "torch")] = TorchBackend(StreamingDiTTA(net, hw, tau, fusion=fusion))
            path, _ = export_onnx(net, hw, os.path.join(tmp, impl), "bench", tau=tau, fusion=fusion)
            runners[(impl, "openvino")] = OpenVINOBackend(path)
            runners[(impl, "openvino-f32")] = OpenVINOBackend(path, precision="f32")
            runners[(impl, "onnxruntime")] = OrtBackend(path)
    states = {k: r.step(a)[2] for k, r in runners.items()}  # has_prev = 1 from here on
    times = {k: [] for k in runners}
    for _ in range(2):
        for k, r in runners.items():
            r.step(b, states[k])
    for _ in range(iters):
        for k, r in runners.items():
            t0 = time.perf_counter()
            r.step(b, states[k])
            times[k].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) * 1000 for k, v in times.items()}
    rows = [{"impl": i, "backend": be, "frame": f"{hw[1]}x{hw[0]}", "median_ms": round(m, 1),
             "fps": round(1000 / m, 3)} for (i, be), m in med.items()]
    ratio = {f"{i} {be}": round(med[("iss", be)] / med[(i, be)], 3)
             for (i, be) in med if i != "iss"}
    speedup = {f"{i} {be}": round(med[(i, "torch")] / med[(i, be)], 3)
               for (i, be) in med if be != "torch"}
    return {"frame": f"{hw[1]}x{hw[0]}", "rounds": iters, "rows": rows, "ditta_over_iss_throughput": ratio,
            "speedup_over_torch": speedup, "torch_threads": torch.get_num_threads()}


def _run_interleaved(args) -> None:
    from common import RESULTS, describe_machine, machine, write_results

    import subprocess

    runs = []
    for size in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--interleaved-case", size, str(args.iters), args.model,
                              args.frame], capture_output=True, text=True, check=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps({k: v for k, v in runs[-1].items() if k != "rows"}), flush=True)
    cmd = "python bench/streaming_speed.py " + " ".join(sys.argv[1:])
    payload = {"model": args.model, "machine": machine(), "runs": runs, "command": cmd}
    write_results(args.name + "_interleaved", payload)
    m = payload["machine"]
    lines = [f"# Streaming speed, interleaved ({args.model}; {describe_machine(m)})", "", f"`{cmd}`", "",
             "All cases of a frame size in one process, one step of each per round, median over "
             f"{args.iters} rounds; every pixel may use the previous frame (the add-on's worst case). "
             "`openvino`: its default precision (bf16 on this CPU); `openvino-f32`: float32.", "",
             "| frame | case | torch ms | openvino ms | openvino-f32 ms | onnxruntime ms |", "|---|---|---|---|---|---|"]
    for run in runs:
        ms = {(r["impl"], r["backend"]): r["median_ms"] for r in run["rows"]}
        for impl in ("iss", "ditta", "ditta-frame"):
            lines.append(f"| {run['frame']} | {impl} | " + " | ".join(
                f"{ms[(impl, b)]:.0f}" for b in ("torch", "openvino", "openvino-f32", "onnxruntime")) + " |")
    lines += ["", "Frozen DiTTA / ISS throughput (same backend):", ""]
    lines += [f"- {run['frame']} {k}: {v:.2f}" for run in runs for k, v in run["ditta_over_iss_throughput"].items()]
    lines += ["", "Throughput over torch's (same case):", ""]
    lines += [f"- {run['frame']} {k}: {v:.2f}x" for run in runs for k, v in run["speedup_over_torch"].items()]
    with open(os.path.join(RESULTS, args.name + "_interleaved.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def _plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if "fps" in r]
    labels = sorted({f"{r['impl']}/{r['backend']}" + (f"/{r['device']}-{r['precision']}" if r["device"] != "cpu" else "")
                     for r in done})
    frames = list(dict.fromkeys(r["frame"] for r in done))
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / max(1, len(labels))
    for i, lab in enumerate(labels):
        ys = []
        for fr in frames:
            m = [r["fps"] for r in done if r["frame"] == fr and f"{r['impl']}/{r['backend']}" + (
                f"/{r['device']}-{r['precision']}" if r["device"] != "cpu" else "") == lab]
            ys.append(m[0] if m else 0)
        ax.bar([j + i * width for j in range(len(frames))], ys, width, label=lab)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(frames))], frames)
    ax.set_xlabel("frame size (network input fixed by the model card)")
    ax.set_ylabel("frames per second")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("Streaming throughput (higher is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    from common import DEFAULT_CLIP, RESULTS, SHARED, describe_machine, machine, run_case, write_results

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", nargs=9, metavar="ARG", help=argparse.SUPPRESS)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--sizes", nargs="+", default=SIZES, help="frame sizes HxW")
    p.add_argument("--model", default=MODEL)
    p.add_argument("--frame", default=os.path.join(DEFAULT_CLIP, "frames", "000000.png"))
    p.add_argument("--dense-limit-gib", type=float, default=8.0)
    p.add_argument("--name", default="streaming_speed")
    p.add_argument("--interleaved", action="store_true",
                   help="instead: iss/ditta on every backend in one process per frame size, interleaved rounds "
                        "(writes <name>_interleaved.{json,md}: the steadier ratios)")
    p.add_argument("--interleaved-case", nargs=4, metavar="ARG", help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault("DITTA_MODEL_MIRROR", os.path.join(SHARED, "models"))
    if args.interleaved_case:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        size, iters, model, frame = args.interleaved_case
        print(json.dumps(interleaved(size, int(iters), model, frame)))
        return
    if args.interleaved:
        _run_interleaved(args)
        return
    if args.case:
        impl, backend, size, device, fp16, iters, model, frame, limit = args.case
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        print(json.dumps(case(impl, backend, size, device, fp16 == "1", int(iters), model, frame, float(limit))))
        return
    import torch

    combos = [(i, "torch", "cpu", "0") for i in IMPLS] + [(i, b, "cpu", "0") for b in BACKENDS
                                                          for i in ("iss", "ditta", "ditta-frame")]
    if torch.cuda.is_available():
        combos += [(i, "torch", "cuda", h) for i in ("iss", "ditta", "two-frame") for h in ("0", "1")]
    rows = []
    for size in args.sizes:
        for impl, backend, device, fp16 in combos:
            row = run_case(__file__, [impl, backend, size, device, fp16, str(args.iters), args.model, args.frame,
                                      str(args.dense_limit_gib)])
            rows.append(row)
            print(json.dumps(row if "timing" not in row else {k: v for k, v in row.items() if k != "timing"}),
                  flush=True)
    ratios = {}
    for r in rows:
        if r["impl"] in ("ditta", "ditta-frame") and "fps" in r:
            iss = [x for x in rows if x["impl"] == "iss" and x["frame"] == r["frame"] and x["backend"] == r["backend"]
                   and x["device"] == r["device"] and x["precision"] == r["precision"] and "fps" in x]
            if iss:
                ratios[f"{r['impl']} {r['frame']} {r['backend']} {r['device']} {r['precision']}"] = \
                    round(r["fps"] / iss[0]["fps"], 3)
    speedup = {}
    for r in rows:
        if r["impl"] == "ditta" and r["backend"] != "torch" and r["device"] == "cpu" and "fps" in r:
            t = [x for x in rows if x["impl"] == "ditta" and x["backend"] == "torch" and x["device"] == "cpu"
                 and x["frame"] == r["frame"] and "fps" in x]
            if t:
                speedup[f"{r['frame']} {r['backend']}"] = round(r["fps"] / t[0]["fps"], 3)
    payload = {"model": args.model, "machine": machine(), "rows": rows, "ditta_over_iss_throughput": ratios,
               "ditta_speedup_over_torch": speedup,
               "command": "python bench/streaming_speed.py " + " ".join(sys.argv[1:])}
    write_results(args.name, payload)
    lines = [f"# Streaming speed ({args.model}; {describe_machine(payload['machine'])}"
             f"{', ' + payload['machine']['cuda'] if payload['machine']['cuda'] else ''})", "",
             f"`{payload['command']}`", "",
             "| frame | case | backend | device | median ms | p95 ms | fps | extra peak MiB | swap: export s + session s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "fps" not in r:
            lines.append(f"| {r['frame']} | {r['impl']} | {r['backend']} | {r['device']} | - | - | - | - | "
                         f"skipped: {r.get('skipped', '')} |")
            continue
        t = r["timing"]
        swap = f"{r['swap_export_s']} + {r['swap_session_s']}" if "swap_export_s" in r else "-"
        lines.append(f"| {r['frame']} | {r['impl']} | {r['backend']} | {r['device']} {r['precision']} | "
                     f"{t['median_ms']:.0f} | {t['p95_ms']:.0f} | {r['fps']:.2f} | {r['extra_peak_mb']} | {swap} |")
    lines += ["", "Frozen DiTTA / plain ISS throughput (same frame size, backend, device):", ""]
    lines += [f"- {k}: {v:.2f}" for k, v in ratios.items()]
    lines += ["", "Frozen DiTTA throughput over torch's (CPU, same frame size):", ""]
    lines += [f"- {k}: {v:.2f}x" for k, v in speedup.items()]
    with open(os.path.join(RESULTS, args.name + ".md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    _plot(rows, os.path.join(RESULTS, args.name + ".png"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
