"""Benchmark: ESPNetv2 (Cityscapes weights) inference speed on this machine.

For each registered ESPNetv2 model: the network forward alone with the default
(NCHW) layout and with channels-last, and the whole frame-wise prediction
(``ISSRunner.predict``: preprocessing, forward, two-step resize to the 480x360
frame, softmax, argmax, reliability) on a real CamVid frame.

    python bench/iss_speed.py [--iters 10]     # writes bench/results/iss_speed.{json,md}
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

MODELS = ["espnetv2-s2.0-cityscapes-1024x512", "espnetv2-s2.0-cityscapes-512x256", "espnetv2-s1.0-cityscapes-512x256"]


def main() -> None:
    import numpy as np
    import torch

    from common import DEFAULT_CLIP, SHARED, machine, time_fn, write_results
    from ditta_ros.inference import ISSRunner
    from ditta_ros.iss import load_model

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--frame", default=os.path.join(DEFAULT_CLIP, "frames", "000000.png"))
    args = p.parse_args()
    os.environ.setdefault("DITTA_MODEL_MIRROR", os.path.join(SHARED, "models"))
    if os.path.isfile(args.frame):
        import cv2

        frame = cv2.imread(args.frame)[:, :, ::-1].copy()
    else:
        frame = np.random.default_rng(0).integers(0, 255, (360, 480, 3), dtype=np.uint8)
    rows = []
    for name in MODELS:
        model, _ = load_model(name)
        w, h = model.preprocess.size
        x = torch.randn(1, 3, h, w)
        with torch.inference_mode():
            nchw = time_fn(lambda: model(x), iters=args.iters)
            cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
            xc = x.contiguous(memory_format=torch.channels_last)
            cl = time_fn(lambda: cl_model(xc), iters=args.iters)
        runner = ISSRunner(model)
        full = time_fn(lambda: runner.predict(frame), iters=args.iters)
        row = {"model": name, "input": f"{w}x{h}", "forward_nchw": nchw, "forward_channels_last": cl,
               "predict_frame": full, "frame": f"{frame.shape[1]}x{frame.shape[0]}",
               "fps_predict": 1000 / full["median_ms"]}
        rows.append(row)
        print(f"{name}: forward NCHW {nchw['median_ms']:.0f} ms, channels-last {cl['median_ms']:.0f} ms, "
              f"full frame prediction {full['median_ms']:.0f} ms ({row['fps_predict']:.2f} fps)", flush=True)
    path = write_results("iss_speed", {"benchmark": "ESPNetv2 CPU inference", "machine": machine(), "rows": rows,
                                       "command": "python bench/iss_speed.py"})
    md = ["| model | input | forward NCHW ms (median/p95) | forward channels-last ms | full frame predict ms | fps |",
          "|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['model']} | {r['input']} | {r['forward_nchw']['median_ms']:.0f} / {r['forward_nchw']['p95_ms']:.0f}"
                  f" | {r['forward_channels_last']['median_ms']:.0f} / {r['forward_channels_last']['p95_ms']:.0f}"
                  f" | {r['predict_frame']['median_ms']:.0f} / {r['predict_frame']['p95_ms']:.0f} | {r['fps_predict']:.2f} |")
    with open(path.replace(".json", ".md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
