"""rosbag2 tooling on the ``rosbags`` library (no rosbag2_py wheel exists): make, read, eval (ROS-free).

* :func:`make_bag` -- clip folder or video -> rosbag2 (sqlite3 or mcap) with the
  frames on ``/camera/image_raw`` (rgb8, or ``.../compressed`` jpeg) at the clip's
  fps and, where labels exist, ``/ditta/gt`` (mono8 class ids of the clip's label
  set, 255 = ignore) with the same header stamps. ROS-free.
* playing and recording over ROS live in :mod:`ditta_ros.tools.bag_ros` (the only
  module besides the node that imports rclpy).
* :func:`eval_bag` -- matches recorded ``/ditta/semantic`` to ground truth by header
  stamp and writes the same ``result.json`` as ``ditta eval`` plus latency
  statistics (output minus input receive time on the recorder's clock). ROS-free.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Dict, List, Optional

import numpy as np

log = logging.getLogger("ditta.bag")

IMAGE_TOPIC = "/camera/image_raw"
GT_TOPIC = "/ditta/gt"
SEMANTIC_TOPIC = "/ditta/semantic"
#: what ``ditta bag record --ready-topics`` prints once those topics' publishers are matched
READY_LINE = "recording: publishers matched on"


def _typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)


def _header(ts, stamp_ns: int, frame_id: str):
    Time = ts.types["builtin_interfaces/msg/Time"]
    Header = ts.types["std_msgs/msg/Header"]
    return Header(stamp=Time(sec=int(stamp_ns // 10**9), nanosec=int(stamp_ns % 10**9)), frame_id=frame_id)


def make_bag(clip_path: str, out: str, fps: float = 0.0, compressed: bool = False, storage: str = "sqlite3",
             max_frames: Optional[int] = None, start_ns: int = 1_700_000_000 * 10**9, frame_id: str = "camera",
             progress: bool = True, passes: int = 1) -> Dict[str, object]:
    """Write a clip as a rosbag2.

    Args:
        clip_path: clip folder (frames/ + labels/) or video file (see :func:`ditta_ros.data.open_clip`).
        out: bag folder to create (must not exist).
        fps: frame rate of the stamps (Hz); the clip's own (clip.yaml / video) when ``fps <= 0``.
        compressed: jpeg ``sensor_msgs/CompressedImage`` on ``/camera/image_raw/compressed``.
        storage: ``sqlite3`` or ``mcap``.
        passes: the clip played this many times back and forth (:func:`pingpong`), stamps rising at ``fps``
            throughout: a longer input with continuous motion (``ditta demo --realtime`` streams the second
            pass after the node adapted during the first).

    Returns:
        summary: topics, frames (messages per topic), labelled frames, fps.

    Raises:
        FileExistsError: ``out`` exists; ValueError: unknown storage, empty clip or ``passes < 1``.
    """
    import cv2
    from rosbags.rosbag2 import StoragePlugin, Writer
    from tqdm import tqdm

    from ..data import open_clip

    plugins = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}
    if storage not in plugins:
        raise ValueError(f"unknown storage {storage!r}; choose sqlite3 or mcap")
    if os.path.exists(out):
        raise FileExistsError(f"bag {out} exists; remove it or choose another name")
    clip = open_clip(clip_path, max_frames)
    if len(clip) == 0:
        raise ValueError(f"clip {clip_path} has no frames")
    order = pingpong(len(clip), passes)
    if fps <= 0:
        fps = float(getattr(clip, "fps", 0) or 30.0)
    ts = _typestore()
    Image = ts.types["sensor_msgs/msg/Image"]
    Compressed = ts.types["sensor_msgs/msg/CompressedImage"]
    topic = IMAGE_TOPIC + ("/compressed" if compressed else "")
    labelled = 0
    with Writer(out, version=9, storage_plugin=plugins[storage]) as writer:
        img_type = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
        conn = writer.add_connection(topic, img_type, typestore=ts)
        gt_conn = None
        for k, i in enumerate(tqdm(order, desc=f"bag {os.path.basename(out)}", disable=not progress, unit="frame")):
            stamp = start_ns + int(round(k * 1e9 / fps))
            frame = clip.frame(i)
            hdr = _header(ts, stamp, frame_id)
            if compressed:
                ok, buf = cv2.imencode(".jpg", frame[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
                msg = Compressed(header=hdr, format="jpeg", data=np.frombuffer(buf.tobytes(), np.uint8))
            else:
                msg = Image(header=hdr, height=frame.shape[0], width=frame.shape[1], encoding="rgb8",
                            is_bigendian=0, step=frame.shape[1] * 3,
                            data=np.ascontiguousarray(frame).reshape(-1))
            writer.write(conn, stamp, ts.serialize_cdr(msg, img_type))
            label = clip.label(i)
            if label is not None:
                if gt_conn is None:
                    gt_conn = writer.add_connection(GT_TOPIC, "sensor_msgs/msg/Image", typestore=ts)
                lab = np.ascontiguousarray(label.astype(np.uint8))
                gt = Image(header=hdr, height=lab.shape[0], width=lab.shape[1], encoding="mono8", is_bigendian=0,
                           step=lab.shape[1], data=lab.reshape(-1))
                writer.write(gt_conn, stamp, ts.serialize_cdr(gt, "sensor_msgs/msg/Image"))
                labelled += 1
    summary = {"bag": out, "topics": [topic] + ([GT_TOPIC] if labelled else []), "frames": len(order),
               "labelled_frames": labelled, "fps": fps, "storage": storage, "passes": passes,
               "label_set": getattr(clip, "label_set", None)}
    with open(os.path.join(out, "ditta_bag.json"), "w") as f:  # what eval needs to score without the clip
        json.dump(summary, f, indent=2)
    return summary


def pingpong(n: int, passes: int = 1) -> List[int]:
    """Frame indices of ``passes`` plays of ``n`` frames back and forth, the turning frame not repeated:
    ``pingpong(4, 3) == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]`` (``n + (passes - 1) * (n - 1)`` indices for
    ``n > 1``; a single frame is repeated ``passes`` times).

    Raises:
        ValueError: ``passes < 1`` or ``n < 1``.
    """
    if passes < 1 or n < 1:
        raise ValueError(f"passes and frames must be >= 1, got passes={passes}, frames={n}")
    order = list(range(n))
    for p in range(1, passes):
        order += list(range(n - 2, -1, -1)) if p % 2 else list(range(1, n))
        if n == 1:
            order.append(0)
    return order


def _stamp_ns(msg) -> int:
    return int(msg.header.stamp.sec) * 10**9 + int(msg.header.stamp.nanosec)


IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")


def image_topics(bag: str) -> Dict[str, Dict[str, object]]:
    """``{topic: {"msgtype", "count"}}`` of the image topics (raw or compressed) in ``bag``.

    Raises:
        FileNotFoundError: ``bag`` is not a rosbag2 folder (no ``metadata.yaml``).
    """
    from rosbags.rosbag2 import Reader

    if not os.path.isfile(os.path.join(bag, "metadata.yaml")):
        raise FileNotFoundError(f"{bag} is not a rosbag2 folder (no metadata.yaml)")
    with Reader(bag) as reader:
        return {c.topic: {"msgtype": c.msgtype, "count": int(c.msgcount)} for c in reader.connections
                if c.msgtype in IMAGE_TYPES}


def read_images(bag: str, topic: str, skip_bad: bool = False) -> Dict[int, np.ndarray]:
    """``{header stamp ns: image}`` of an image topic: ``[H, W]`` for mono8/mono16 label
    images, RGB uint8 ``[H, W, 3]`` for colour encodings and for ``CompressedImage``
    (jpeg/png, decoded with OpenCV).

    Raises:
        KeyError: the topic is absent.
        ImageDecodeError / UnsupportedEncoding: a message cannot be decoded (with
            ``skip_bad`` it is logged and left out instead).
    """
    from rosbags.rosbag2 import Reader

    from ..imgmsg import ImageDecodeError, UnsupportedEncoding, decode_compressed, decode_image

    ts = _typestore()
    out: Dict[int, np.ndarray] = {}
    with Reader(bag) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        if not conns:
            raise KeyError(f"topic {topic} not in {bag} (has {sorted(reader.topics)})")
        for conn, _, raw in reader.messages(connections=conns):
            msg = ts.deserialize_cdr(raw, conn.msgtype)
            try:
                if conn.msgtype.endswith("CompressedImage"):
                    img = decode_compressed(msg.format, np.asarray(msg.data, np.uint8))
                elif msg.encoding == "mono8":
                    img = np.asarray(msg.data, np.uint8).reshape(msg.height, msg.step)[:, :msg.width].copy()
                elif msg.encoding == "mono16":
                    img = np.frombuffer(np.asarray(msg.data, np.uint8).tobytes(),
                                        ">u2" if msg.is_bigendian else "<u2")
                    img = img.reshape(msg.height, msg.step // 2)[:, :msg.width].astype(np.int64)
                else:
                    img = decode_image(msg.encoding, msg.height, msg.width, msg.step, np.asarray(msg.data, np.uint8),
                                       bool(msg.is_bigendian))
            except (ImageDecodeError, UnsupportedEncoding, ValueError) as err:
                if not skip_bad:
                    raise
                log.warning("%s: skipping the message stamped %d: %s", topic, _stamp_ns(msg), err)
                continue
            out[_stamp_ns(msg)] = img
    return out


def receive_times(bag: str, topic: str) -> Dict[int, int]:
    """``{header stamp ns: bag (receive) time ns}`` of a recorded topic.

    Raises:
        KeyError: the topic is absent (rosbags would read every topic for an empty selection).
    """
    from rosbags.rosbag2 import Reader

    ts = _typestore()
    out = {}
    with Reader(bag) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        if not conns:
            raise KeyError(f"topic {topic} not in {bag}")
        for conn, t, raw in reader.messages(connections=conns):
            out[_stamp_ns(ts.deserialize_cdr(raw, conn.msgtype))] = int(t)
    return out


def latency_stats(recorded: str, input_topic: str = IMAGE_TOPIC, stamps=None) -> Dict[str, object]:
    """Per-frame latency of a recording holding both the camera topic and ``/ditta/semantic``.

    Latency = receive time of the label image minus receive time of the frame with
    the same header stamp, both on the recorder's clock (ms). ``stamps`` restricts it
    to those frames. Returns ``{}`` when the recording lacks either topic, else
    median, p95, mean (ms), frames and the definition.
    """
    try:
        recv, recv_in = receive_times(recorded, SEMANTIC_TOPIC), receive_times(recorded, input_topic)
    except KeyError:
        return {}
    keys = sorted(recv) if stamps is None else stamps
    lat = np.array([(recv[s] - recv_in[s]) / 1e6 for s in keys if s in recv and s in recv_in])
    if not lat.size:
        return {}
    return {"median": float(np.median(lat)), "p95": float(np.percentile(lat, 95)), "mean": float(lat.mean()),
            "frames": int(lat.size),
            "definition": f"receive time of {SEMANTIC_TOPIC} minus receive time of {input_topic} "
                          "with the same header stamp, both on the recorder's clock"}


def eval_bag(recorded: str, ground_truth: str, out_dir: str, model_label_set: str = "cityscapes19",
             label_map: Optional[str] = None, gt_label_set: Optional[str] = None,
             skip_first: int = 0, input_topic: str = IMAGE_TOPIC) -> Dict[str, object]:
    """Score recorded ``/ditta/semantic`` against ground truth, matched by header stamp.

    Args:
        recorded: bag with ``/ditta/semantic`` (from ``ditta bag record``).
        ground_truth: a bag with ``/ditta/gt`` (from ``ditta bag make``) or a clip
            folder with labels (frame i <-> the i-th stamp of the recorded input).
        model_label_set, label_map, gt_label_set: label-set bridge, as ``ditta eval``.
        skip_first: ignore the first N ground-truth frames (the warm-up under W2F).
        input_topic: the camera topic, if recorded too: the latency is measured from it.

    Returns:
        the dict written to ``<out_dir>/result.json``: mIoU, wIoU, mVC8, mVC16,
        matched/missing frames, latency statistics (ms) when the recording holds
        the receive times.

    Raises:
        ValueError: no stamp matches.
    """
    from .evaluate import bridge_label_sets
    from ..labels import load_label_map
    from ..metrics import ConfusionMatrix, summarize

    preds = read_images(recorded, SEMANTIC_TOPIC)
    if os.path.isdir(ground_truth) and os.path.isfile(os.path.join(ground_truth, "metadata.yaml")):
        gts = read_images(ground_truth, GT_TOPIC)
        meta_path = os.path.join(ground_truth, "ditta_bag.json")
        if gt_label_set is None and os.path.isfile(meta_path):
            with open(meta_path) as f:
                gt_label_set = json.load(f).get("label_set")
    else:
        from ..data import open_clip

        clip = open_clip(ground_truth)
        gt_label_set = gt_label_set or getattr(clip, "label_set", None)
        try:
            stamps = sorted(receive_times(recorded, input_topic))
        except KeyError:
            stamps = sorted(preds)
        gts = {s: clip.label(i) for i, s in enumerate(stamps) if i < len(clip) and clip.label(i) is not None}
    bridge = bridge_label_sets(model_label_set, gt_label_set, load_label_map(label_map) if label_map else None)
    stamps = sorted(gts)[skip_first:]
    matched = [s for s in stamps if s in preds]
    if not matched:
        raise ValueError(f"no /ditta/semantic stamp of {recorded} matches the ground truth's {len(stamps)} stamps")
    cm = ConfusionMatrix(bridge.eval_set.num_classes)
    p_list, g_list = [], []
    for s in matched:
        p, g = bridge.pred(preds[s]), bridge.gt(gts[s])
        cm.add(p, g)
        p_list.append(p)
        g_list.append(g)
    result: Dict[str, object] = {"recorded": recorded, "ground_truth": ground_truth, **summarize(cm, p_list, g_list),
                                 "matched_frames": len(matched), "missing_frames": len(stamps) - len(matched),
                                 "label_set": bridge.eval_set.name, "skip_first": skip_first}
    lat = latency_stats(recorded, input_topic, matched)
    if lat:
        result["latency_ms"] = lat
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "result.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result
