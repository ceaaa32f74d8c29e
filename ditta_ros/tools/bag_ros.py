"""Play and record rosbag2 over ROS 2 with rclpy (the ROS half of :mod:`ditta_ros.tools.bag`).

* :func:`play_bag` -- publishes a bag's serialized messages at the recorded rate
  (``rate``, ``topics``, ``loop``, ``/clock``), after waiting for subscribers so
  no frame is lost.
* :func:`record_bag` -- subscribes raw to topics and writes a bag until stopped,
  N messages, a duration, or an idle timeout.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Callable, Dict, Iterable, Optional, Sequence

from .bag import _typestore

log = logging.getLogger("ditta.bag")

def _msg_class(msgtype: str):
    import importlib

    pkg, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)


def _wait_for_state(node, status: Dict[str, object], state: str, timeout: float) -> None:
    """Spin ``node`` until ``status["state"]`` (filled by its ``/ditta/status`` subscription) is ``state``,
    or ``ISS`` (the adaptation was refused, skipped or failed: the node serves the ISS model).

    Raises:
        RuntimeError: neither within ``timeout`` s.
    """
    import rclpy

    end = time.monotonic() + timeout
    while status["state"] not in (state, "ISS") and time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.2)
    if status["state"] not in (state, "ISS"):
        raise RuntimeError(f"/ditta/status did not reach {state} within {timeout} s (last: {status['state']})")


def play_bag(bag: str, rate: float = 1.0, topics: Optional[Sequence[str]] = None, loop: bool = False,
             clock: bool = False, wait_subscribers: float = 10.0,
             reliable: bool = True, node=None, pause_after: int = 0, wait_state: str = "STREAMING",
             wait_timeout: float = 1800.0, lockstep: bool = False, lockstep_timeout: float = 60.0,
             min_subscribers: int = 1, progress: bool = False,
             on_done: Optional[Callable[[int], None]] = None, pause_on: str = "") -> int:
    """Publish the messages of ``bag`` with rclpy at ``rate`` x the recorded rate.

    ``clock`` also publishes ``/clock`` from the header stamps (for ``use_sim_time``).
    ``pause_after = N``: after N messages, pause until ``/ditta/status`` reports
    ``wait_state`` (an unhurried replay for evaluation: the node adapts on the first
    N frames and the rest arrive once it streams). ``lockstep``: after each message
    with a header, wait (up to ``lockstep_timeout`` s) for ``/ditta/semantic`` with the
    same stamp, so a slow node drops nothing. ``pause_on``: pause while ``/ditta/status`` reports this
    state until it reports ``wait_state`` (a live camera that waits while the node adapts). ``min_subscribers``: how many
    subscribers each topic must have before playing (e.g. 2 = the node and a
    recorder; messages sent before a subscriber matched are lost to it). Waits up
    to ``wait_subscribers`` seconds for a subscriber on every topic. Returns the
    number of messages published. ``progress``: a tqdm bar on stderr. ``on_done(sent)``
    is called once everything is published and acknowledged, before the ROS teardown
    (see :func:`record_bag`).
    """
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rosbags.rosbag2 import Reader

    ts = _typestore()
    own = node is None
    if own:
        rclpy.init()
        node = rclpy.create_node("ditta_bag_play")
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT)
    sent = 0
    try:
        with Reader(bag) as reader:
            conns = [c for c in reader.connections if topics is None or c.topic in topics]
            pubs = {c.id: node.create_publisher(_msg_class(c.msgtype), c.topic, qos) for c in conns}
            from tqdm import tqdm

            bar = tqdm(total=sum(c.msgcount for c in conns), desc="play", unit="msg", disable=not progress)
            clock_pub = None
            if clock:
                from rosgraph_msgs.msg import Clock

                clock_pub = node.create_publisher(Clock, "/clock", 10)
            deadline = time.monotonic() + wait_subscribers
            while time.monotonic() < deadline and not all(p.get_subscription_count() >= min_subscribers
                                                          for p in pubs.values()):
                time.sleep(0.05)
            missing = [c.topic for c in conns if pubs[c.id].get_subscription_count() < min_subscribers]
            if missing:
                log.warning("no subscriber yet on %s; playing anyway", ", ".join(missing))
            else:
                time.sleep(0.5)  # discovery is two-sided: let the subscribers match this publisher too
            status = {"state": None}
            done = set()
            if lockstep:
                from sensor_msgs.msg import Image

                node.create_subscription(
                    Image, "/ditta/semantic",
                    lambda m: done.add(int(m.header.stamp.sec) * 10**9 + int(m.header.stamp.nanosec)), 50)
            if pause_after or pause_on:
                import json

                from std_msgs.msg import String

                node.create_subscription(String, "/ditta/status",
                                         lambda m: status.update(json.loads(m.data)), 10)
            while True:
                t_bag0 = t_wall0 = None
                for conn, t, raw in reader.messages(connections=conns):
                    if pause_on:
                        rclpy.spin_once(node, timeout_sec=0)
                    if (pause_after and sent == pause_after) or (pause_on and status["state"] == pause_on):
                        log.info("paused after %d messages until /ditta/status reports %s", sent, wait_state)
                        _wait_for_state(node, status, wait_state, wait_timeout)
                        pause_on, t_bag0 = "", None  # pause once
                    if t_bag0 is None:
                        t_bag0, t_wall0 = t, time.monotonic()
                    delay = t_wall0 + (t - t_bag0) / 1e9 / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    if clock_pub is not None and "header" in getattr(ts.types[conn.msgtype], "__dataclass_fields__", {}):
                        from rosgraph_msgs.msg import Clock

                        msg = ts.deserialize_cdr(raw, conn.msgtype)
                        c = Clock()
                        c.clock.sec, c.clock.nanosec = msg.header.stamp.sec, msg.header.stamp.nanosec
                        clock_pub.publish(c)
                    pubs[conn.id].publish(bytes(raw))
                    sent += 1
                    bar.update(1)
                    if lockstep and "header" in getattr(ts.types[conn.msgtype], "__dataclass_fields__", {}):
                        h = ts.deserialize_cdr(raw, conn.msgtype).header
                        stamp = int(h.stamp.sec) * 10**9 + int(h.stamp.nanosec)
                        end = time.monotonic() + lockstep_timeout
                        while stamp not in done and time.monotonic() < end:
                            rclpy.spin_once(node, timeout_sec=0.05)
                        if stamp not in done:
                            log.warning("no /ditta/semantic for stamp %d within %.0f s", stamp, lockstep_timeout)
                        t_bag0 = None  # the schedule restarts after each acknowledged frame
                if not loop:
                    break
            from rclpy.duration import Duration

            for pub in pubs.values():  # RELIABLE: make sure the last messages are delivered before exiting
                pub.wait_for_all_acked(Duration(seconds=5))
            bar.close()
        if on_done is not None:
            on_done(sent)
    finally:
        if own:
            node.destroy_node()
            rclpy.shutdown()
    return sent


def record_bag(topics: Iterable[str], out: str, count: Optional[int] = None, idle_timeout: float = 0.0,
               duration: float = 0.0, storage: str = "sqlite3", node=None, types: Optional[Dict[str, str]] = None,
               on_done: Optional[Callable[[Dict[str, int]], None]] = None, ready_topics: Iterable[str] = (),
               on_ready: Optional[Callable[[], None]] = None) -> Dict[str, int]:
    """Subscribe raw to ``topics`` and write them to the bag ``out``.

    Stops after ``count`` messages in total, ``duration`` seconds, ``idle_timeout``
    seconds without a message (after the first), or SIGINT/SIGTERM (Ctrl-C); either
    way the bag is closed with its ``metadata.yaml`` (a KeyboardInterrupt raised
    inside the writer's close would leave a bag without one, so the signals only set
    a stop flag while recording in the main thread). ``types`` maps a topic to
    its message type (by default ``std_msgs/msg/String`` for the ``/ditta/*`` JSON topics,
    ``sensor_msgs/msg/CompressedImage`` for a topic ending in ``/compressed``,
    ``sensor_msgs/msg/Image`` otherwise). Returns messages per topic.

    ``on_done(counts)`` is called once the bag is closed, before the ROS teardown: a
    process can report its result (and arm a watchdog, as the ``ditta bag`` CLI does)
    even if the teardown hangs. Destroying the last node destroys the Fast DDS
    participant, which was seen once in CI to spin forever in
    ``DomainParticipant::set_listener`` (rmw_fastrtps ``destroy_participant``).

    ``on_ready()`` is called once, when the subscription of every topic in ``ready_topics``
    (a subset of ``topics``) has matched at least one publisher: a replay started after it
    loses none of those publishers' messages to discovery (the first label image of a
    route was once published before the recorder had matched the node).

    Raises:
        ValueError: a topic of ``ready_topics`` is not recorded (before any ROS work).
    """
    topics = list(topics)
    ready = list(ready_topics)
    unknown = [t for t in ready if t not in topics]
    if unknown:
        raise ValueError(f"ready_topics {unknown} are not among the recorded topics {topics}")
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rosbags.rosbag2 import StoragePlugin, Writer

    default_types = {"/ditta/status": "std_msgs/msg/String", "/ditta/labels": "std_msgs/msg/String",
                     "/diagnostics": "diagnostic_msgs/msg/DiagnosticArray"}
    types = dict(types or {})
    ts = _typestore()
    own = node is None
    stop = []
    previous = {}
    if own:
        from rclpy.signals import SignalHandlerOptions

        handle_signals = threading.current_thread() is threading.main_thread()
        for sig in (signal.SIGINT, signal.SIGTERM) if handle_signals else ():
            previous[sig] = signal.signal(sig, lambda *_: stop.append(True))
        rclpy.init(signal_handler_options=SignalHandlerOptions.NO if handle_signals else None)
        node = rclpy.create_node("ditta_bag_record")
    counts = {t: 0 for t in topics}
    subs = {}
    last = [None]
    plugin = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}[storage]
    try:
        with Writer(out, version=9, storage_plugin=plugin) as writer:
            conns = {}
            for topic in counts:
                msgtype = types.get(topic) or default_types.get(topic) or (
                    "sensor_msgs/msg/CompressedImage" if topic.endswith("/compressed") else "sensor_msgs/msg/Image")
                conns[topic] = writer.add_connection(topic, msgtype, typestore=ts)

                def cb(raw, topic=topic):
                    writer.write(conns[topic], time.time_ns(), bytes(raw))
                    counts[topic] += 1
                    last[0] = time.monotonic()

                subs[topic] = node.create_subscription(
                    _msg_class(msgtype), topic, cb, QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE),
                    raw=True)
            t0 = time.monotonic()
            while rclpy.ok() and not stop:
                rclpy.spin_once(node, timeout_sec=0.1)
                if ready and all(subs[t].get_publisher_count() > 0 for t in ready):
                    ready = []
                    if on_ready is not None:
                        on_ready()
                now = time.monotonic()
                if count and sum(counts.values()) >= count:
                    break
                if duration and now - t0 >= duration:
                    break
                if idle_timeout and last[0] is not None and now - last[0] >= idle_timeout:
                    break
        if on_done is not None:
            on_done(counts)
    except KeyboardInterrupt:
        pass
    finally:
        if own:
            node.destroy_node()
            if rclpy.ok():
                rclpy.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return counts
