"""Benchmark: the add-on's local-window attention (ours) vs the official dense masked form.

Feature maps 120x160 (480x640 input at 1/4) and 120x216 (VSPW 480p), D = 256
(SegFormer decoder width), C = 124 (VSPW classes), radius 5. Inference (``local``,
``dense``) and forward + backward as in adaptation (``*_train``: ours with its
hand-written backward vs autograd through the slicing form). Each case runs in a
fresh process so its peak memory is its own; "extra_peak_mb" is the peak RSS
above the RSS after the inputs were allocated.

    python bench/addon_attention.py            # writes bench/results/addon_attention.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SIZES = [(120, 160), (120, 216)]
D, C, RADIUS = 256, 124, 5


def case(impl: str, h: int, w: int, iters: int) -> dict:
    import torch

    from common import peak_rss_mb, rss_mb, time_fn
    from ditta_ros.addon import _attention_graph, dense_window_attention, local_window_attention

    train = impl.endswith("_train")
    fn = {"local": local_window_attention, "dense": dense_window_attention,
          "slicing-autograd": _attention_graph}[impl.replace("_train", "")]
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, D, h, w, generator=g), torch.randn(1, D, h, w, generator=g)
    v = torch.randn(1, C, h, w, generator=g)
    base = rss_mb()
    if train:  # forward + backward (what adaptation runs)
        q.requires_grad_(True), k.requires_grad_(True), v.requires_grad_(True)
        stats = time_fn(lambda: fn(q, k, v, RADIUS).sum().backward(), warmup=1, iters=iters)
    else:
        with torch.inference_mode():
            stats = time_fn(lambda: fn(q, k, v, RADIUS), warmup=1, iters=iters)
    return {"impl": impl, "h": h, "w": w, **stats, "extra_peak_mb": peak_rss_mb() - base}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", nargs=4, metavar=("IMPL", "H", "W", "ITERS"), help=argparse.SUPPRESS)
    p.add_argument("--iters", type=int, default=5)
    args = p.parse_args()
    if args.case:
        impl, h, w, iters = args.case
        print(json.dumps(case(impl, int(h), int(w), int(iters))))
        return
    from common import machine, run_case, write_results

    rows = []
    for h, w in SIZES:
        for impl in ("local", "dense", "local_train", "slicing-autograd_train"):
            r = run_case(__file__, [impl, str(h), str(w), str(args.iters if impl == "local" else max(2, args.iters // 2))])
            rows.append(r)
            print(f"{impl:5s} {h}x{w}: median {r['median_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms, "
                  f"+{r['extra_peak_mb']:.0f} MiB peak", flush=True)
    path = write_results("addon_attention", {"benchmark": "addon local-window vs dense masked attention",
                                             "D": D, "C": C, "radius": RADIUS, "machine": machine(), "rows": rows,
                                             "command": "python bench/addon_attention.py"})
    md = ["| feature map | implementation | median ms | p95 ms | extra peak MiB |", "|---|---|---|---|---|"]
    md += [f"| {r['h']}x{r['w']} | {r['impl']} | {r['median_ms']:.1f} | {r['p95_ms']:.1f} | {r['extra_peak_mb']:.0f} |"
           for r in rows]
    with open(path.replace(".json", ".md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
