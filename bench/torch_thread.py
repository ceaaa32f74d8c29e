"""Benchmark: the frozen streaming step in the main thread vs in a second Python thread.

Why the node runs its inference loop in the main thread (``ditta_ros/node.py``
``main``): with 2 OpenMP threads, the same torch step ran slower in a second
Python thread on the development CPU. Each case runs in a fresh process:
``torch.set_num_threads(N)`` then the step timed in the main thread, then in a
``threading.Thread`` (the model was loaded in the main thread, as in the node).

    python bench/torch_thread.py [--model M] [--size 640x272] [--iters 8]

Writes ``bench/results/torch_thread.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def case(model_name: str, size: str, threads: int, iters: int) -> dict:
    import numpy as np
    import torch

    from common import time_fn
    from ditta_ros.adapt import DiTTANet
    from ditta_ros.iss import load_model
    from ditta_ros.runtime import RuntimeOptions, select_backend
    from ditta_ros.streaming import StreamingDiTTA

    torch.set_num_threads(threads)
    w, h = (int(v) for v in size.split("x"))
    backend = select_backend(RuntimeOptions(backend="torch"), torch_model=StreamingDiTTA(DiTTANet(load_model(model_name)[0]), (h, w), 0.8))
    frame = (np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)
    state = [None]

    def step():
        _, _, state[0] = backend.step(frame, state[0])

    out = {"threads": threads, "main": time_fn(step, iters=iters)}
    box = {}
    worker = threading.Thread(target=lambda: box.update(t=time_fn(step, iters=iters)))
    worker.start()
    worker.join()
    out["second_thread"] = box["t"]
    return out


def main() -> None:
    from common import machine, run_case, write_markdown, write_results

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="espnetv2-s2.0-cityscapes-1024x512")
    p.add_argument("--size", default="640x272", help="frame WxH")
    p.add_argument("--iters", type=int, default=8)
    p.add_argument("--case", nargs=4, metavar=("MODEL", "SIZE", "THREADS", "ITERS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        m, size, threads, iters = args.case
        print(json.dumps(case(m, size, int(threads), int(iters))))
        return
    os.environ.setdefault("DITTA_MODEL_MIRROR", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                                             "shared", "models"))
    rows = [run_case(os.path.abspath(__file__), [args.model, args.size, str(t), str(args.iters)]) for t in (2, 1)]
    payload = {"model": args.model, "frame": args.size, "rows": rows, "machine": machine(),
               "command": "python bench/torch_thread.py " + " ".join(sys.argv[1:])}
    write_results("torch_thread", payload)
    md = [f"Frozen DiTTA streaming step, torch CPU, {args.model}, frame {args.size}; median (p95) ms over "
          f"{args.iters} steps; `{payload['command']}`", "",
          "| torch threads | main thread | second thread | second / main |", "|---|---|---|---|"]
    for r in rows:
        a, b = r["main"], r["second_thread"]
        md.append(f"| {r['threads']} | {a['median_ms']:.0f} ({a['p95_ms']:.0f}) | {b['median_ms']:.0f} "
                  f"({b['p95_ms']:.0f}) | {b['median_ms'] / a['median_ms']:.2f} |")
    write_markdown("torch_thread", md)


if __name__ == "__main__":
    main()
