"""``ditta_node``: camera topic in, ``/ditta/semantic`` out; warm-up adaptation in the background.

A thin ROS 2 layer over :class:`ditta_ros.live.LivePipeline` (the same core as
``ditta eval``)::

    python -m ditta_ros.node --ros-args --params-file config/ditta.yaml [-r image:=/camera/image_raw]

Subscribes ``input_topic`` (sensor_msgs/Image, or CompressedImage when
``compressed``); publishes, each with the input's header copied unchanged:

* ``/ditta/semantic`` sensor_msgs/Image mono8 class ids (255 = ignore; mono16 above 255 classes)
* ``/ditta/semantic/color`` rgb8 palette rendering (``publish_color``)
* ``/ditta/semantic/confidence`` mono8 0-255 reliability (``publish_confidence``)
* ``/ditta/labels`` std_msgs/String JSON (label set, ids, names, palette), transient-local
* ``/ditta/status`` std_msgs/String JSON (state, progress, frames in/out/dropped/bad, fps, latency_ms =
  publish time minus the input's header stamp (meaningful for wall-clock stamps, not for bag replays),
  processing_ms = publish time minus receive time; both smoothed)
* ``/diagnostics`` diagnostic_msgs/DiagnosticArray with the same figures

Services (std_srvs/Trigger): ``~/readapt`` (new warm-up window), ``~/reset`` (pre-trained model).

The subscription callback never blocks: it puts the message in a one-slot mailbox
(a message still waiting there is dropped and counted) and the inference loop
(:meth:`work`; the main thread under :func:`main`, callbacks spin in a background
thread) decodes, runs the pipeline and publishes. A bad message (unknown encoding, truncated data,
corrupt JPEG, NaN output) is logged, counted and skipped.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import fields
from typing import Optional

import numpy as np

from .imgmsg import ImageDecodeError, UnsupportedEncoding, decode_compressed, decode_image, encode_image, label_image
from .live import LiveConfig, LivePipeline

#: node-level parameters beyond LiveConfig: name -> (default, description)
NODE_PARAMS = {
    "input_topic": ("image", "camera image topic (remap it or set it here)"),
    "compressed": (False, "subscribe sensor_msgs/CompressedImage instead of sensor_msgs/Image"),
    "qos_reliability": ("auto", "input QoS: reliable | best_effort | auto (reliable, switches to best_effort "
                                "when the publisher is best-effort)"),
    "qos_depth": (5, "input QoS history depth"),
    "output_resolution": ("input", "label image size: input (the camera's) | network (the model input)"),
    "publish_color": (True, "publish /ditta/semantic/color (rgb8 palette rendering)"),
    "publish_confidence": (False, "publish /ditta/semantic/confidence (mono8 reliability 0-255)"),
    "status_period": (1.0, "seconds between /ditta/status and /diagnostics messages"),
}

LIVE_DESCRIPTIONS = {
    "model": "ISS model: registry name, Hugging Face SegFormer folder or ESPNetv2 .pth",
    "device": "torch device for adaptation and the torch backend: cpu | cuda | auto",
    "adapt": "run the DiTTA warm-up adaptation (false: pre-trained ISS model only)",
    "warmup_frames": "warm-up window length in kept frames",
    "warmup_seconds": "warm-up window length in seconds of stream time (0: frames only)",
    "frame_stride": "keep every N-th frame during warm-up",
    "teacher": "video propagator for the distillation targets: minisam | mobilesam | sam2",
    "teacher_checkpoint": "teacher weights (required for sam2; minisam, mobilesam: registry default when empty)",
    "teacher_config": "sam2 config name (default sam2.1/sam2.1_hiera_t.yaml)",
    "preset": "DiTTA configuration: default (chosen on the development set) | faithful (the official code's)",
    "lr": "adaptation learning rate (AdamW); 0: the preset's",
    "iters": "adaptation passes over the warm-up frames; 0: the preset's",
    "params": "adapted parameters: decoder | cls_head | addon; empty: the preset's",
    "loss_mode": "faithful (official code) | corrected; empty: the preset's",
    "guard": "do-no-harm guard: serve the ISS model when the adapted one changes what the ISS is sure of",
    "tau": "reliability threshold of the fusion (Eq. 3); 0 disables the add-on branch",
    "backend": "runtime: auto (tensorrt > openvino > onnxruntime > torch) | tensorrt | openvino | onnxruntime | torch",
    "openvino_device": "OpenVINO device: CPU | GPU | NPU",
    "openvino_precision": "OpenVINO precision: auto (the device's default: bf16 on CPUs with bf16 units) | f32 | bf16 "
                          "| f16",
    "iss_backend": "serve the pre-trained model (warm-up, adapt false, fallback) on the backend too (else torch)",
    "fp16": "half precision on TensorRT and torch CUDA",
    "export_dir": "folder of the exported ONNX (one per model, frame size and weights; reused across restarts)",
    "engine_cache": "TensorRT engine and timing cache folder; OpenVINO compiled-model cache (openvino/)",
    "auto_readapt": "re-adapt automatically on a sustained scene change (class-histogram shift); off by default",
    "scene_change_threshold": "total-variation distance (0..1) of the class histogram that counts as a change",
    "scene_change_frames": "frames for the reference histogram and for how long a change must last",
}


def params_table():
    """``[(name, default, description)]`` of every parameter the node declares, in
    declaration order (LiveConfig fields, then the node's own). ROS-free: the README
    table (``ditta params --markdown``) and ``config/ditta.yaml`` are checked against it."""
    rows = [(f.name, f.default, LIVE_DESCRIPTIONS[f.name]) for f in fields(LiveConfig)]
    return rows + [(name, default, desc) for name, (default, desc) in NODE_PARAMS.items()]


def main(args=None) -> None:
    import logging

    import rclpy
    from rclpy.executors import MultiThreadedExecutor

    # the core logs with `logging` (adaptation progress, backend choice): show it beside the ROS log
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(name)s: %(message)s")
    rclpy.init(args=args)
    node = DittaNode(worker_thread=False)
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)

    def spin():
        try:
            executor.spin()
        except rclpy.executors.ExternalShutdownException:
            pass

    # Callbacks spin in a background thread; inference runs in this (main) thread, the one that loaded
    # the model: every extra thread doing torch work gets its own OpenMP pool, and with more pool threads
    # than cores libgomp stops spin-waiting, which made per-frame inference slower in a worker thread.
    threading.Thread(target=spin, name="ditta-spin", daemon=True).start()
    try:
        node.work(alive=rclpy.ok)
    except KeyboardInterrupt:
        pass
    finally:
        node.shutdown()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


def _make_node_class():
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
    from rcl_interfaces.msg import ParameterDescriptor
    from rclpy.event_handler import SubscriptionEventCallbacks
    from rclpy.node import Node
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CompressedImage, Image
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    class _DittaNode(Node):
        def __init__(self, worker_thread: bool = True):
            super().__init__("ditta_node")
            for f in fields(LiveConfig):
                self.declare_parameter(f.name, f.default, ParameterDescriptor(description=LIVE_DESCRIPTIONS[f.name]))
            for name, (default, desc) in NODE_PARAMS.items():
                self.declare_parameter(name, default, ParameterDescriptor(description=desc))
            p = {n: self.get_parameter(n).value for n in [f.name for f in fields(LiveConfig)] + list(NODE_PARAMS)}
            self.params = p
            self.cfg = LiveConfig(**{f.name: p[f.name] for f in fields(LiveConfig)})
            self.get_logger().info(f"loading {self.cfg.model} on {self.cfg.device}")
            self.pipeline = LivePipeline(self.cfg)
            self.label_set = self._label_set()
            self.num_classes = self.pipeline.runner.model.num_classes

            self.pub_sem = self.create_publisher(Image, "/ditta/semantic", 5)
            self.pub_color = self.create_publisher(Image, "/ditta/semantic/color", 5) if p["publish_color"] else None
            self.pub_conf = (self.create_publisher(Image, "/ditta/semantic/confidence", 5)
                             if p["publish_confidence"] else None)
            latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                                 reliability=ReliabilityPolicy.RELIABLE)
            self.pub_labels = self.create_publisher(String, "/ditta/labels", latched)
            self.pub_status = self.create_publisher(String, "/ditta/status", 5)
            self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 5)
            self.pub_labels.publish(String(data=json.dumps({"model": self.cfg.model, **self.label_set.to_dict()})))
            self.create_service(Trigger, "~/readapt", self._srv_readapt)
            self.create_service(Trigger, "~/reset", self._srv_reset)

            self._msg_type = CompressedImage if p["compressed"] else Image
            self._event_cbs = SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_qos)
            best_effort = p["qos_reliability"] == "best_effort"
            self._subscribe(best_effort)

            self._mailbox = None
            self._cv = threading.Condition()
            self._running = True
            self._latency_ms = 0.0
            self._processing_ms = 0.0
            self._fps = 0.0
            self._last_out: Optional[float] = None
            self._worker = None
            if worker_thread:  # else the owner calls work() (main() does, in the main thread)
                self._worker = threading.Thread(target=self.work, name="ditta-infer", daemon=True)
                self._worker.start()
            self._DiagnosticArray, self._DiagnosticStatus, self._KeyValue = DiagnosticArray, DiagnosticStatus, KeyValue
            self._Image, self._String = Image, String
            self.create_timer(float(p["status_period"]), self._publish_status)
            self._warned_encodings = set()
            self.get_logger().info(f"ready: {p['input_topic']} ({self._msg_type.__name__}) -> /ditta/semantic; "
                                   f"state {self.pipeline.phase.value}")

        # -- input -------------------------------------------------------------------
        def _label_set(self):
            from .labels import get_label_set

            info = self.pipeline.info
            name = info.label_set if info is not None else "cityscapes19"
            return get_label_set(name, info.extra.get("classes") if info is not None else None)

        def _subscribe(self, best_effort: bool):
            qos = QoSProfile(depth=int(self.params["qos_depth"]),
                             reliability=ReliabilityPolicy.BEST_EFFORT if best_effort else ReliabilityPolicy.RELIABLE)
            if getattr(self, "sub", None) is not None:
                self.destroy_subscription(self.sub)
            self.sub = self.create_subscription(self._msg_type, self.params["input_topic"], self._on_image, qos,
                                                event_callbacks=self._event_cbs)
            self.best_effort = best_effort

        def _on_incompatible_qos(self, event):
            if self.params["qos_reliability"] == "auto" and not self.best_effort:
                self.get_logger().warn("the image publisher is BEST_EFFORT: switching the input to BEST_EFFORT")
                self._subscribe(True)

        def _on_image(self, msg):
            """Never blocks: the newest message replaces a waiting one (which is dropped)."""
            with self._cv:
                self.pipeline.counters.frames_in += 1
                if self._mailbox is not None:
                    self.pipeline.counters.dropped += 1
                self._mailbox = (msg, time.time())
                self._cv.notify()

        # -- work ----------------------------------------------------------------------
        def work(self, alive=lambda: True):
            """The inference loop: take the mailbox's message, decode, run the pipeline, publish.
            Returns after :meth:`shutdown` or once ``alive()`` is false (checked every 0.5 s)."""
            while True:
                with self._cv:
                    while self._mailbox is None and self._running and alive():
                        self._cv.wait(0.5)
                    if not (self._running and alive()):
                        return
                    msg, received = self._mailbox
                    self._mailbox = None
                try:
                    self._handle(msg, received)
                except UnsupportedEncoding as exc:
                    self._bad("unsupported_encoding", exc, once=getattr(msg, "encoding", ""))
                except ImageDecodeError as exc:
                    self._bad("decode_error", exc)
                except ValueError as exc:
                    self._bad("bad_output", exc)
                except Exception as exc:  # never die on one message
                    self._bad("internal_error", exc)

        def _bad(self, reason: str, exc: Exception, once: str = None):
            c = self.pipeline.counters
            c.bad += 1
            c.bad_reasons[reason] = c.bad_reasons.get(reason, 0) + 1
            if once is not None:
                if once in self._warned_encodings:
                    return
                self._warned_encodings.add(once)
            self.get_logger().warn(f"skipped a message ({reason}): {exc}")

        def _handle(self, msg, received: float):
            if self._msg_type is self._Image:
                frame = decode_image(msg.encoding, msg.height, msg.width, msg.step, msg.data, bool(msg.is_bigendian))
            else:
                frame = decode_compressed(msg.format, msg.data)
            pred, _ = self.pipeline.process(frame, msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9)
            labels, conf = pred.labels, pred.confidence
            if self.params["output_resolution"] == "network":
                import cv2

                h, w = self.pipeline.runner.model.preprocess.input_hw(frame.shape[:2])
                labels = cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)
                conf = cv2.resize(conf, (w, h), interpolation=cv2.INTER_LINEAR)
            enc, step, data = label_image(labels, self.num_classes)
            self.pub_sem.publish(self._image(msg.header, labels.shape, enc, step, data))
            if self.pub_color is not None:
                enc, step, data = encode_image(self.label_set.colorize(labels))
                self.pub_color.publish(self._image(msg.header, labels.shape, enc, step, data))
            if self.pub_conf is not None:
                c8 = np.clip(conf * 255.0 + 0.5, 0, 255).astype(np.uint8)
                self.pub_conf.publish(self._image(msg.header, c8.shape, "mono8", c8.shape[1], c8.tobytes()))
            now = time.time()
            stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            self.pipeline.counters.frames_out += 1
            lat = (now - stamp) * 1000.0
            self._latency_ms = lat if self._latency_ms == 0 else 0.9 * self._latency_ms + 0.1 * lat
            proc = (now - received) * 1000.0
            self._processing_ms = proc if self._processing_ms == 0 else 0.9 * self._processing_ms + 0.1 * proc
            if self._last_out is not None:
                inst = 1.0 / max(1e-6, now - self._last_out)
                self._fps = inst if self._fps == 0 else 0.9 * self._fps + 0.1 * inst
            self._last_out = now

        def _image(self, header, shape, encoding, step, data):
            out = self._Image()
            out.header = header
            out.height, out.width = int(shape[0]), int(shape[1])
            out.encoding, out.is_bigendian, out.step = encoding, 0, int(step)
            out.data = data
            return out

        # -- status, services --------------------------------------------------------
        def status(self):
            st = self.pipeline.status()
            st.update(fps=round(self._fps, 3), latency_ms=round(self._latency_ms, 1),
                      processing_ms=round(self._processing_ms, 1),
                      input_qos="best_effort" if self.best_effort else "reliable")
            return st

        def _publish_status(self):
            st = self.status()
            self.pub_status.publish(self._String(data=json.dumps(st)))
            arr = self._DiagnosticArray()
            arr.header.stamp = self.get_clock().now().to_msg()
            d = self._DiagnosticStatus()
            d.name, d.hardware_id = "ditta_node: semantic segmentation", self.cfg.model
            d.level = self._DiagnosticStatus.WARN if (st["bad"] or st["error"] or st["warning"]) \
                else self._DiagnosticStatus.OK
            d.message = f"{st['state']}, {st['fps']:.1f} fps, bad {st['bad']}, dropped {st['dropped']}" + \
                (f"; {st['warning']}" if st["warning"] else "")
            flat = {k: v for k, v in st.items() if k not in ("last_adaptation", "bad_reasons")}
            flat.update({f"bad_{k}": v for k, v in st["bad_reasons"].items()})
            d.values = [self._KeyValue(key=k, value=str(v)) for k, v in flat.items()]
            arr.status = [d]
            self.pub_diag.publish(arr)

        def _srv_readapt(self, request, response):
            response.message = self.pipeline.readapt()
            response.success = not response.message.startswith("busy")
            return response

        def _srv_reset(self, request, response):
            response.message = self.pipeline.reset()
            response.success = True
            return response

        def shutdown(self):
            self.get_logger().info("final status: " + json.dumps(self.status()))
            with self._cv:
                self._running = False
                self._cv.notify()

    return _DittaNode


def DittaNode(worker_thread: bool = True):
    """Build the node (rclpy must be initialised). ``worker_thread=False``: the caller
    runs the inference loop itself with ``node.work()`` (as :func:`main` does)."""
    return _make_node_class()(worker_thread)


if __name__ == "__main__":
    main()
