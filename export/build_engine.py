#!/usr/bin/env python3
"""Build (or reuse) the TensorRT engine for an exported DiTTA ONNX, without ROS.

    python export/build_engine.py EXPORT.onnx [--fp16] [--cache-dir DIR] [--check FRAMES_DIR]

The engine lands in the cache folder the node and ``select_backend('tensorrt')``
look in (``~/.cache/ditta/engines`` by default), named by the key of
``ditta_ros.runtime.tensorrt.engine_cache_key`` (ONNX sha256 + TensorRT version +
GPU name + precision), so the node finds it at start-up instead of building it.
``--check`` runs a folder of images through the engine and through onnxruntime
and prints the label agreement. Needs TensorRT and a CUDA GPU; NOT run on the
development machines of this repository (see export/README.md).
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("onnx", help="ditta_<model>_<H>x<W>.onnx written by `ditta export` (metadata JSON beside it)")
    p.add_argument("--fp16", action="store_true", default=None, help="fp16 engine (default: the export's precision)")
    p.add_argument("--cache-dir", default=None, help="engine cache folder (default ~/.cache/ditta/engines)")
    p.add_argument("--check", help="folder of images to compare the engine against onnxruntime on")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(name)s: %(message)s")
    from ditta_ros.runtime.tensorrt import TensorRTBackend

    engine = TensorRTBackend(args.onnx, args.cache_dir, args.fp16)
    print(f"engine: {engine.engine_path} ({engine.describe()})")
    if args.check:
        import cv2
        import numpy as np

        from ditta_ros.runtime.ort import OrtBackend

        ort = OrtBackend(args.onnx)
        s1 = s2 = None
        agree = []
        for path in sorted(glob.glob(os.path.join(args.check, "*")))[:50]:
            img = cv2.imread(path)
            if img is None:
                continue
            frame = np.ascontiguousarray(cv2.resize(img, engine.frame_hw[::-1])[:, :, ::-1])
            l1, _, s1 = engine.step(frame, s1)
            l2, _, s2 = ort.step(frame, s2)
            agree.append(float((l1 == l2).mean()))
        print(f"label agreement TensorRT vs onnxruntime over {len(agree)} frames: "
              f"min {min(agree):.4f}, mean {sum(agree) / len(agree):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
