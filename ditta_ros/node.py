"""``ditta_node``: camera topic in, ``ditta/semantic`` out; warm-up adaptation in the background.

ROS I/O only, over the ROS-free core: parameters are :mod:`ditta_ros.params`, the loop
(mailbox, decoding, counters, statistics) is :class:`ditta_ros.live.FrameLoop`, the models
are :class:`ditta_ros.live.LivePipeline` (the same core as ``ditta eval``). A frame goes one
way: subscription callback -> ``FrameLoop.offer`` -> (inference thread) decode, pipeline,
output size -> :meth:`DittaNode._publish`::

    python -m ditta_ros.node --ros-args --params-file config/ditta.yaml [-r image:=/camera/image_raw] [-r __ns:=/cam1]

Subscribes ``input_topic`` (sensor_msgs/Image, or CompressedImage when ``compressed``) and the
camera's ``camera_info`` beside it (image_transport's convention: ``/cam/image_raw`` ->
``/cam/camera_info``; optional); publishes, relative to the node's namespace and each with the
input's header copied unchanged (image_transport's layout: a base topic per image, its
``/compressed`` sub-topic beside it):

* ``ditta/semantic`` sensor_msgs/Image mono8 class ids (255 = ignore; mono16 above 255 classes);
  ``ditta/semantic/compressed`` the same as a lossless PNG (encoded only while subscribed)
* ``ditta/semantic_color`` rgb8 palette rendering and ``ditta/semantic_color/compressed`` JPEG
  (``publish_color``, ``jpeg_quality``; the JPEG only while subscribed)
* ``ditta/confidence`` mono8 0-255 reliability (``publish_confidence``)
* ``ditta/camera_info`` sensor_msgs/CameraInfo of the label image (its header and size; the
  intrinsics scaled for ``output_resolution: network``), once the camera's has come
* ``ditta/processing_time_ms`` and ``ditta/latency_ms`` std_msgs/Float32 per label image (the loop's
  processing, receive to publish; steady clock, so right under ``use_sim_time``), for rqt_plot
* ``ditta/labels`` std_msgs/String JSON (label set, ids, names, palette), transient-local
* ``ditta/status`` std_msgs/String JSON (:meth:`ditta_ros.live.FrameLoop.status`: state, progress,
  counters, which model made the last label image, fps, latency, checkpoint, last adaptation)
* ``/diagnostics`` diagnostic_msgs/DiagnosticArray, one status named after the node, its level
  recomputed every period (:class:`ditta_ros.live.Health`)

Status and diagnostics run on a steady-clock timer (they keep coming while ``/clock`` is paused).
With ``lazy`` (default), after the warm-up no frame is decoded or inferred while nobody subscribes to
an output (``idle`` in the status; the input subscription stays); the next frame after a subscriber
appears is answered. A warm-up always runs; scene-change detection sees no idle frame.

Services: ``~/readapt``, ``~/reset``, ``~/save`` (std_srvs/Trigger) and ``~/enable``
(std_srvs/SetBool: pause or resume inference, keeping the adaptation).

A bad parameter ends start-up with a message naming it (exit status 2); SIGINT and SIGTERM
stop the adaptation in flight and exit cleanly (status 0).
"""

from __future__ import annotations

import functools
import json
import logging
import signal
import sys
import threading
import time

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Float32, String
from std_srvs.srv import SetBool, Trigger

from .imgmsg import compress, decode_message, encode_image, label_image, scale_camera_info
from .live import FrameLoop, Health, LivePipeline, LogForwarder
from .params import Param, ParameterError, effective, param_specs, resolve


def subscription_event_callbacks():
    """``SubscriptionEventCallbacks`` of this distro: ``rclpy.event_handler`` (Iron and later)
    or ``rclpy.qos_event`` (Humble)."""
    try:
        from rclpy.event_handler import SubscriptionEventCallbacks
    except ImportError:
        from rclpy.qos_event import SubscriptionEventCallbacks
    return SubscriptionEventCallbacks


def descriptor(p: Param) -> ParameterDescriptor:
    """The ROS descriptor of a parameter: description, allowed values, range, read-only
    unless it may change at run time. Numbers take integers too (``tau: 1``): their type is
    checked by :func:`ditta_ros.params.resolve`, not by rclpy."""
    d = ParameterDescriptor(description=p.description, additional_constraints=p.allowed(),
                            read_only=not p.runtime)
    if p.kind is float:
        d.dynamic_typing = True
        if p.low is not None:
            d.floating_point_range = [FloatingPointRange(from_value=float(p.low),
                                                         to_value=float(p.high if p.high is not None else 1e300))]
    elif p.kind is int and p.low is not None:
        d.integer_range = [IntegerRange(from_value=int(p.low), to_value=int(p.high if p.high is not None
                                                                                 else 2 ** 62), step=1)]
    return d


class DittaNode(Node):
    """The ROS node (rclpy must be initialised). Raises :class:`ParameterError` for a bad
    parameter, a missing model or missing teacher weights; :func:`main` turns it into an
    exit with a message. The inference loop runs in the caller's thread: :meth:`work`."""

    def __init__(self, node_name: str = "ditta_node", **kwargs):
        super().__init__(node_name, **kwargs)
        self.specs = {p.name: p for p in param_specs()}
        values = {}
        for p in self.specs.values():
            try:
                values[p.name] = self.declare_parameter(p.name, p.default, descriptor(p)).value
            except Exception as exc:  # rclpy's type/range errors at declaration (a params file, -p)
                given = self._parameter_overrides.get(p.name)
                raise ParameterError(p.name, given.value if given is not None else exc, p.allowed()) from exc
        self.cfg, self.opts = resolve(values)
        self.get_logger().info("parameters: " + json.dumps(effective(self.cfg, self.opts)))
        self._forwarder = LogForwarder(self.get_logger())
        core = logging.getLogger("ditta")
        core.addHandler(self._forwarder)
        core.setLevel(logging.INFO)
        core.propagate = False

        self.get_logger().info(f"loading {self.cfg.model} on {self.cfg.device}")
        self.pipeline = LivePipeline(self.cfg)
        self.label_set = self._label_set()
        self.num_classes = self.pipeline.runner.model.num_classes
        self.loop = FrameLoop(self.pipeline, self._publish, self.opts.output_resolution,
                              warn=self.get_logger().warning, wanted=self._wanted if self.opts.lazy else None,
                              timing=self._publish_timing,
                              decode=functools.partial(decode_message, mono16_shift=self.opts.mono16_shift))
        self.health = Health(self.opts.no_input_warn_seconds, self.opts.min_output_fps)

        self.pub_sem = self.create_publisher(Image, "ditta/semantic", 5)
        self.pub_sem_png = self.create_publisher(CompressedImage, "ditta/semantic/compressed", 5)
        self.pub_color = self.pub_color_jpeg = self.pub_conf = None
        if self.opts.publish_color:
            self.pub_color = self.create_publisher(Image, "ditta/semantic_color", 5)
            self.pub_color_jpeg = self.create_publisher(CompressedImage, "ditta/semantic_color/compressed", 5)
        if self.opts.publish_confidence:
            self.pub_conf = self.create_publisher(Image, "ditta/confidence", 5)
        self.pub_info = self.create_publisher(CameraInfo, "ditta/camera_info", 5)
        self.pub_processing = self.create_publisher(Float32, "ditta/processing_time_ms", 5)
        self.pub_latency = self.create_publisher(Float32, "ditta/latency_ms", 5)
        #: what lazy processing watches: a subscriber on any of these wants label images
        self.outputs = [p for p in (self.pub_sem, self.pub_sem_png, self.pub_color, self.pub_color_jpeg, self.pub_conf,
                                    self.pub_info, self.pub_processing, self.pub_latency) if p is not None]
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             reliability=ReliabilityPolicy.RELIABLE)
        self.pub_labels = self.create_publisher(String, "ditta/labels", latched)
        self.pub_status = self.create_publisher(String, "ditta/status", 5)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 5)
        self.pub_labels.publish(String(data=json.dumps({"model": self.cfg.model, **self.label_set.to_dict()})))
        self.create_service(Trigger, "~/readapt", self._srv_readapt)
        self.create_service(Trigger, "~/reset", self._srv_reset)
        self.create_service(Trigger, "~/save", self._srv_save)
        self.create_service(SetBool, "~/enable", self._srv_enable)
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._msg_type = CompressedImage if self.opts.compressed else Image
        self._event_cbs = subscription_event_callbacks()(incompatible_qos=self._on_incompatible_qos)
        self.sub = None
        self._subscribe(self.opts.qos_reliability == "best_effort")
        self.camera_info = None  # the camera's last sensor_msgs/CameraInfo
        self._info_scaled = None  # (that camera_info, label size, its scaled copy)
        # best effort takes both reliable and best-effort publishers (camera drivers use either)
        self.sub_info = self.create_subscription(CameraInfo, self._camera_info_topic(),
                                                 self._on_camera_info,
                                                 QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT))
        self._started = time.monotonic()
        self._last_quiet_warn = -float("inf")
        # the steady clock: status and diagnostics keep coming while a paused /clock stops ROS time
        self.create_timer(self.opts.status_period, self._on_timer, clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.get_logger().info(f"ready: {self.sub.topic_name} ({self._msg_type.__name__}) -> "
                               f"{self.pub_sem.topic_name}; state {self.pipeline.phase.value}")

    # -- input -------------------------------------------------------------------------
    def _label_set(self):
        from .labels import get_label_set

        info = self.pipeline.info
        name = info.label_set if info is not None else "cityscapes19"
        return get_label_set(name, info.extra.get("classes") if info is not None else None)

    def _subscribe(self, best_effort: bool) -> None:
        qos = QoSProfile(depth=self.opts.qos_depth,
                         reliability=ReliabilityPolicy.BEST_EFFORT if best_effort else ReliabilityPolicy.RELIABLE)
        if self.sub is not None:
            self.destroy_subscription(self.sub)
        self.sub = self.create_subscription(self._msg_type, self.opts.input_topic,
                                            lambda msg: self.loop.offer(msg), qos, event_callbacks=self._event_cbs)
        self.best_effort = best_effort

    def _camera_info_topic(self) -> str:
        """``camera_info`` beside the input's base topic (image_transport's convention:
        ``/cam/image_raw`` and ``/cam/image_raw/compressed`` -> ``/cam/camera_info``)."""
        base = self.sub.topic_name
        if self.opts.compressed and base.endswith("/compressed"):
            base = base[:-len("/compressed")]
        parent = base.rsplit("/", 1)[0]
        return f"{parent}/camera_info"

    def _on_camera_info(self, msg) -> None:
        self.camera_info = msg

    def _on_incompatible_qos(self, event) -> None:
        if self.opts.qos_reliability == "auto" and not self.best_effort:
            self.get_logger().warning("the image publisher is BEST_EFFORT: switching the input to BEST_EFFORT")
            self._subscribe(True)

    # -- output ------------------------------------------------------------------------
    def _wanted(self) -> bool:
        """True when any output topic has a subscriber (lazy processing)."""
        return any(p.get_subscription_count() > 0 for p in self.outputs)

    def _publish(self, msg, labels: np.ndarray, conf: np.ndarray, source: str) -> None:
        header = msg.header
        encoding, step, data = label_image(labels, self.num_classes)
        self.pub_sem.publish(self._image(header, encoding, step, data, labels.shape))
        if self.pub_sem_png.get_subscription_count() > 0:
            ids = np.ascontiguousarray(labels, dtype=np.uint8 if encoding == "mono8" else np.uint16)
            self.pub_sem_png.publish(self._compressed(header, *compress(ids, "png")))
        if self.pub_color is not None and (self.pub_color.get_subscription_count() > 0
                                           or self.pub_color_jpeg.get_subscription_count() > 0):
            rgb = self.label_set.colorize(labels)
            self.pub_color.publish(self._image(header, *encode_image(rgb), labels.shape))
            if self.pub_color_jpeg.get_subscription_count() > 0:
                self.pub_color_jpeg.publish(self._compressed(header, *compress(rgb, "jpeg", self.opts.jpeg_quality)))
        if self.pub_conf is not None:
            c8 = np.clip(conf * 255.0 + 0.5, 0, 255).astype(np.uint8)
            self.pub_conf.publish(self._image(header, "mono8", c8.shape[1], c8.tobytes(), c8.shape))
        if self.camera_info is not None:
            cam, cached = self.camera_info, self._info_scaled
            if cached is None or cached[0] is not cam or cached[1] != labels.shape:  # once per camera_info and size
                cached = self._info_scaled = (cam, labels.shape, scale_camera_info(cam, *labels.shape))
            info = cached[2]
            info.header = header
            self.pub_info.publish(info)

    def _publish_timing(self, processing_ms: float, latency_ms: float) -> None:
        self.pub_processing.publish(Float32(data=float(processing_ms)))
        self.pub_latency.publish(Float32(data=float(latency_ms)))

    @staticmethod
    def _compressed(header, fmt: str, data: bytes) -> CompressedImage:
        out = CompressedImage()
        out.header, out.format, out.data = header, fmt, data
        return out

    @staticmethod
    def _image(header, encoding, step, data, shape) -> Image:
        out = Image()
        out.header = header
        out.height, out.width = int(shape[0]), int(shape[1])
        out.encoding, out.is_bigendian, out.step = encoding, 0, int(step)
        out.data = data
        return out

    # -- status, diagnostics, input watchdog -------------------------------------------
    def status(self):
        """:meth:`ditta_ros.live.FrameLoop.status` plus the input QoS in use (``ditta/status`` JSON)."""
        return {**self.loop.status(), "input_qos": "best_effort" if self.best_effort else "reliable"}

    def _on_timer(self) -> None:
        try:
            self._publish_status()
            self._watch_input()
        except Exception as exc:  # a status problem must not stop the timer
            self.get_logger().error(f"status failed: {type(exc).__name__}: {exc}")

    def _publish_status(self) -> None:
        st = self.status()
        self.pub_status.publish(String(data=json.dumps(st)))
        level, message = self.health.update(st, self.loop.last_in)
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        d = DiagnosticStatus()
        d.name = f"{self.get_fully_qualified_name()}: semantic segmentation"
        d.hardware_id = self.cfg.model
        d.level = bytes([level]) if isinstance(DiagnosticStatus().level, bytes) else level
        d.message = message
        flat = {k: v for k, v in st.items() if k not in ("last_adaptation", "bad_reasons", "by_model")}
        flat.update({f"bad_{k}": v for k, v in st["bad_reasons"].items()})
        flat.update({f"frames_{k}": v for k, v in st["by_model"].items()})
        d.values = [KeyValue(key=k, value=str(v)) for k, v in flat.items()]
        arr.status = [d]
        self.pub_diag.publish(arr)

    def _watch_input(self) -> None:
        """WARN, at most once per ``no_input_warn_seconds``, when no image came for that long,
        listing the publishers seen on the input topic (type, QoS)."""
        limit = self.opts.no_input_warn_seconds
        now = time.monotonic()
        quiet = now - (self.loop.last_in or self._started)
        if limit <= 0 or quiet < limit or now - self._last_quiet_warn < limit:
            return
        self._last_quiet_warn = now
        topic = self.sub.topic_name
        pubs = self.get_publishers_info_by_topic(topic)
        if not pubs:
            seen = "no publisher on it (check the topic name, the namespace and remappings)"
        else:
            seen = "publishers: " + "; ".join(
                f"{p.node_namespace.rstrip('/')}/{p.node_name} type {p.topic_type} "
                f"{p.qos_profile.reliability.name.lower()} {p.qos_profile.durability.name.lower()}" for p in pubs)
            want = f"{self._msg_type.__module__.split('.')[0]}/msg/{self._msg_type.__name__}"
            if any(p.topic_type != want for p in pubs):
                seen += f" (this node expects {want}: set compressed accordingly)"
        self.get_logger().warning(f"no image on {topic} for {quiet:.0f} s ({self._msg_type.__name__}, "
                                  f"{'best_effort' if self.best_effort else 'reliable'}); {seen}")

    # -- services, parameters --------------------------------------------------------
    def _srv_readapt(self, request, response):
        response.message = self.pipeline.readapt()
        response.success = not response.message.startswith("busy")
        return response

    def _srv_reset(self, request, response):
        response.message, response.success = self.pipeline.reset(), True
        return response

    def _srv_save(self, request, response):
        try:
            response.message, response.success = self.pipeline.save(), True
        except Exception as exc:
            response.message, response.success = f"not saved: {exc}", False
        return response

    def _srv_enable(self, request, response):
        self.loop.enabled = bool(request.data)
        response.success = True
        response.message = "inference enabled" if request.data else "inference paused (adaptation kept)"
        self.get_logger().info(response.message)
        return response

    def _on_set_parameters(self, parameters):
        """Run-time changes of the parameters that allow them (the others are read-only)."""
        try:
            new = {p.name: self.specs[p.name].check(p.value) for p in parameters if p.name in self.specs}
        except ParameterError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        for name, value in new.items():
            if name in ("auto_readapt", "scene_change_threshold", "readapt_period"):
                setattr(self.cfg, name, value)
                self.pipeline.scene.threshold = self.cfg.scene_change_threshold
            elif name == "no_input_warn_seconds":
                self.opts.no_input_warn_seconds = self.health.stale_seconds = value
            elif name == "min_output_fps":
                self.opts.min_output_fps = self.health.min_fps = value
        return SetParametersResult(successful=True)

    # -- the loop, shutdown ------------------------------------------------------------
    def work(self, alive=lambda: True) -> None:
        """The inference loop (:meth:`FrameLoop.run`) until :meth:`close` or ``alive()`` is false."""
        self.loop.run(alive)

    def close(self, timeout: float = 8.0) -> None:
        """Stop the loop and the adaptation in flight (waits up to ``timeout`` s)."""
        self.loop.stop()
        ended = self.pipeline.close(timeout)
        if not ended:
            self.get_logger().warning("a worker thread was still running at shutdown")
        self.get_logger().info("final status: " + json.dumps(self.status()))
        logging.getLogger("ditta").removeHandler(self._forwarder)


def main(args=None) -> None:
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor

    rclpy.init(args=args)
    log = rclpy.logging.get_logger("ditta_node")
    try:
        node = DittaNode()
    except ParameterError as exc:
        log.fatal(f"{exc}; not starting")
        rclpy.try_shutdown()
        sys.exit(2)
    except Exception as exc:  # anything else at start-up: one clear line, not a traceback
        log.fatal(f"start-up failed: {type(exc).__name__}: {exc}")
        rclpy.try_shutdown()
        sys.exit(1)
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    stopping = threading.Event()

    def spin():
        # one failing callback must not end every subscription, timer and service with it
        while rclpy.ok() and not stopping.is_set():
            try:
                executor.spin_once(timeout_sec=0.5)
            except ExternalShutdownException:
                break
            except Exception as exc:
                node.get_logger().error(f"a callback failed: {type(exc).__name__}: {exc}")

    # SIGTERM (a launch file or systemd stopping the node) and SIGINT end the loop through
    # `stopping`; the adaptation in flight is then stopped in node.close()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
    # Callbacks spin in a background thread; inference runs in this (main) thread, the one that loaded
    # the model: every extra thread doing torch work gets its own OpenMP pool, and with more pool threads
    # than cores libgomp stops spin-waiting, which made per-frame inference slower in a worker thread.
    spinner = threading.Thread(target=spin, name="ditta-spin", daemon=True)
    spinner.start()
    try:
        node.work(alive=lambda: rclpy.ok() and not stopping.is_set())
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        stopping.set()
        node.get_logger().info("shutting down")
        node.close(6.0)  # with the joins below, within the 10 s a supervisor usually grants
        spinner.join(1.0)
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
