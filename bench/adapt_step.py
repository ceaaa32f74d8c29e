"""Benchmark: where one test-time adaptation step spends its time (issue 20, item 2: the warm-up's
candidates are ~40 such steps each).

On the first frames of a clip (labels: the ISS's own, objects: one per ISS class; the values do not
matter for timing), at the model's input size, this times :meth:`ditta_ros.adapt.Adapter.step` for the
``decoder`` candidate (BatchNorm frozen, KL anchor) with the frozen reference recomputed every step and
computed once per frame (``frame_key``, what :func:`~ditta_ros.adapt.adapt` does), and for the
``faithful`` candidate; and the forward passes inside a step: the adapted network's heads on the frame
pair (no gradient), the momentum model's on the pair and on the current frame alone (with the largest
difference between the two on the current frame: a batch of one is not bit-identical), the reference;
and a ``decoder`` and a ``faithful`` step one after the other against both at once in two threads (the
candidates trained concurrently). Cases are interleaved round by round.

    python bench/adapt_step.py [CLIP] [--model M] [--steps 6] [--rounds 2]
    # writes bench/results/adapt_step.{json,md}
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    import statistics
    import threading

    import numpy as np
    import torch

    from common import DEFAULT_CLIP, clip_parser, describe_machine, machine, time_fn, write_markdown, write_results
    from ditta_ros.adapt import FAITHFUL_ADAPT, AdaptConfig, Adapter, DiTTANet, freeze_batchnorm, set_train_mode
    from ditta_ros.data import open_clip
    from ditta_ros.inference import ISSRunner
    from ditta_ros.iss import load_model

    p = clip_parser(__doc__)
    p.set_defaults(clip=DEFAULT_CLIP)
    p.add_argument("--model", default="espnetv2-s2.0-cityscapes-1024x512")
    p.add_argument("--steps", type=int, default=6, help="timed steps per case and round")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()

    model, info = load_model(args.model)
    runner = ISSRunner(model)
    clip = open_clip(args.clip)
    frames = [clip.frame(i) for i in range(3)]
    with torch.no_grad():
        enc = [tuple(e.detach() for e in model.encode(runner.prepare(f))) for f in frames]
    input_hw = tuple(runner.prepare(frames[0]).shape[2:])
    preds = [runner.predict(f).labels.astype(np.int64) for f in frames]
    labels = [torch.as_tensor(p) for p in preds]
    objs = [torch.as_tensor(p + 1) for p in preds]

    def stepper(cfg, keyed: bool):
        adapter = Adapter(DiTTANet(model), cfg)
        state = {"i": 0}

        def step():
            t = 1 + state["i"] % 2  # frames 1 and 2, each with its previous frame
            state["i"] += 1
            adapter.step(enc[t - 1], enc[t], input_hw, labels[t], objs[t], frame_key=t if keyed else None)
        return step

    cases = {"decoder, reference every step": stepper(AdaptConfig(params="decoder"), False),
             "decoder, reference once per frame": stepper(AdaptConfig(params="decoder"), True),
             "faithful": stepper(FAITHFUL_ADAPT, True)}
    probe = Adapter(DiTTANet(model), AdaptConfig(params="decoder"))
    for net in (probe.model, probe.momentum_model):
        set_train_mode(net)
        freeze_batchnorm(net)

    def no_grad(fn):
        def run():
            with torch.no_grad():
                fn()
        return run

    parts = {"adapted heads, frame pair (no gradient)": no_grad(lambda: probe.model.heads(enc[0], enc[1])),
             "momentum heads, frame pair": no_grad(lambda: probe.momentum_model.heads(enc[0], enc[1], with_addon=False)),
             "momentum heads, current frame alone": no_grad(lambda: probe.momentum_model.heads(None, enc[1],
                                                                                              with_addon=False)),
             "reference heads, current frame": no_grad(lambda: probe.reference.heads(None, enc[1]))}
    def together(parallel: bool):
        first, second = cases["decoder, reference once per frame"], cases["faithful"]

        def run():
            if not parallel:
                first()
                second()
                return
            other = threading.Thread(target=second)
            other.start()
            first()
            other.join()
        return run

    parts["a decoder and a faithful step, one after the other"] = together(False)
    parts["a decoder and a faithful step in two threads at once"] = together(True)
    times = {k: [] for k in [*cases, *parts]}
    for r in range(args.rounds):
        for name, fn in [*cases.items(), *parts.items()]:
            res = time_fn(fn, warmup=2 if r == 0 else 1, iters=args.steps)
            times[name].append(res["median_ms"])
            print(f"round {r + 1}: {name}: {res['median_ms']:.0f} ms", flush=True)
    with torch.no_grad():
        pair = probe.momentum_model.heads(enc[0], enc[1], with_addon=False)
        alone = probe.momentum_model.heads(None, enc[1], with_addon=False)
    diff = max(float((a - b).abs().max()) for a, b in ((pair[0], alone[0]), (pair[2], alone[2])))
    rows = {k: statistics.median(v) for k, v in times.items()}
    m = machine()
    res = {"model": info.name, "clip": clip.name, "frame_hw": list(frames[0].shape[:2]), "input_hw": list(input_hw),
           "steps": args.steps, "rounds": args.rounds, "median_ms": rows, "per_round_ms": times,
           "momentum_pair_vs_alone_max_abs_diff": diff, "machine": m,
           "command": "python bench/adapt_step.py " + " ".join(sys.argv[1:])}
    write_results("adapt_step", res)
    full = rows["decoder, reference every step"]
    lines = [f"One adaptation step ({info.name}, {clip.name} frames {frames[0].shape[1]}x{frames[0].shape[0]}, "
             f"network input {input_hw[1]}x{input_hw[0]}); median of {args.steps} steps x {args.rounds} interleaved "
             f"rounds; torch {m['torch']}, {m['torch_threads']} threads; {describe_machine(m)}; `{res['command']}`", "",
             "| what | ms | share of a decoder step |", "|---|---|---|"]
    for k, v in rows.items():
        lines.append(f"| {k} | {v:.0f} | {100 * v / full:.0f} % |")
    lines += ["", f"The momentum model on the current frame alone differs from its frame-pair batch by up to "
              f"{diff:.2g} (oneDNN on a batch of one): not the same numbers, so the step keeps the pair."]
    write_markdown("adapt_step", lines)


if __name__ == "__main__":
    main()
