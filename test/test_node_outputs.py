"""ditta_node's outputs over real DDS, as a ROS team consumes them: camera_info for the label image,
image_transport-style compressed outputs, lazy processing, plottable timing, and status on the
steady clock while a simulated /clock is paused."""

import os

import numpy as np
import rclpy

from conftest import make_spin_until, stop_process
from test_node import MODEL, _frame_number, _frames, _start, ros_env  # noqa: F401  (the fixture)


def test_namespaced_node_camera_info_compressed_outputs_lazy_work_and_steady_status(shared, ros_env, tmp_path):
    """/cam2, ``use_sim_time`` with a /clock published once and then paused, started from a saved
    adaptation (STREAMING from the first frame) at ``output_resolution: network``:

    * status keeps coming while /clock is paused (steady-clock timer);
    * with no subscriber to any output no frame is processed (``idle``), and a new subscriber gets a
      label image within 2 frames;
    * ``ditta/camera_info`` has the label image's header and size and the intrinsics scaled to it;
    * ``ditta/semantic_color/compressed`` (JPEG) decodes to the colour image's size and colours;
      ``ditta/semantic/compressed`` (PNG) decodes to the label image exactly;
    * ``ditta/processing_time_ms`` and ``ditta/latency_ms`` carry positive numbers;
    * a camera that stops turns the diagnostics to ERROR ("no image for"), and back to OK once it resumes.
    """
    import copy
    import json

    import cv2
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image
    from std_msgs.msg import Float32, String

    from ditta_ros.adapt import DiTTANet
    from ditta_ros.checkpoint import save_adapted
    from ditta_ros.iss import load_model

    model, _ = load_model(MODEL)
    ckpt = str(tmp_path / "saved.pt")
    save_adapted(DiTTANet(copy.deepcopy(model)), ckpt, {"model": MODEL, "frame_hw": [180, 240]})
    proc, log_path = _start(ros_env, tmp_path, f"adapted_checkpoint:={ckpt}", "input_topic:=image",
                            "output_resolution:=network", "use_sim_time:=true", "no_input_warn_seconds:=1.5",
                            ns="/cam2")
    rclpy.init()
    node = rclpy.create_node("ditta_outputs_client")
    try:
        spin_until = make_spin_until(node, proc, log_path)
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        pub = node.create_publisher(Image, "/cam2/image", reliable)
        pub_info = node.create_publisher(CameraInfo, "/cam2/camera_info", reliable)
        pub_clock = node.create_publisher(Clock, "/clock", reliable)
        statuses, diags = [], []
        node.create_subscription(String, "/cam2/ditta/status", lambda m: statuses.append(json.loads(m.data)), 200)
        from diagnostic_msgs.msg import DiagnosticArray

        node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: diags.append(m.status[0]), 200)
        assert spin_until(lambda: pub.get_subscription_count() > 0 and pub_clock.get_subscription_count() > 0
                          and statuses, 120), log_path.read_text()[-3000:]
        clock = Clock()
        clock.clock.sec = 100
        pub_clock.publish(clock)  # ROS time now stands still at 100 s
        n = len(statuses)
        spin_until(lambda: False, 2.0)
        assert len(statuses) >= n + 4, "status stopped while /clock was paused"  # every 0.25 s of steady time

        frames = _frames(shared, 6)
        info = CameraInfo()
        info.width, info.height = 240, 180
        info.k = [200.0, 0.0, 120.0, 0.0, 210.0, 90.0, 0.0, 0.0, 1.0]
        info.p = [200.0, 0.0, 120.0, 0.0, 0.0, 210.0, 90.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        info.distortion_model = "plumb_bob"
        info.d = [0.1, 0.0, 0.0, 0.0, 0.0]

        def send(sec):
            m = Image()
            m.header.stamp.sec, m.header.stamp.nanosec = divmod(int(sec), 10)
            m.header.stamp.nanosec *= 100_000_000
            m.header.frame_id = "cam2_optical"
            f = frames[sec % len(frames)]
            m.height, m.width, m.encoding, m.step = f.shape[0], f.shape[1], "rgb8", f.shape[1] * 3
            m.data = f.tobytes()
            info.header = m.header
            pub_info.publish(info)
            pub.publish(m)

        # lazy: nobody takes an output, so nothing is decoded or inferred
        for sec in (1, 2, 3):
            send(sec)
            assert spin_until(lambda: statuses[-1]["frames_in"] >= sec, 20), statuses[-1]
        assert spin_until(lambda: statuses[-1]["idle"] == 3, 5), statuses[-1]
        assert statuses[-1]["frames_out"] == 0 and statuses[-1]["state"] == "STREAMING"

        got = {}

        def keep(name):
            return lambda m: got.setdefault(name, {}).__setitem__(_frame_number(m), m)

        node.create_subscription(Image, "/cam2/ditta/semantic", keep("semantic"), 10)
        node.create_subscription(Image, "/cam2/ditta/semantic_color", keep("color"), 10)
        node.create_subscription(CompressedImage, "/cam2/ditta/semantic_color/compressed", keep("jpeg"), 10)
        node.create_subscription(CompressedImage, "/cam2/ditta/semantic/compressed", keep("png"), 10)
        node.create_subscription(CameraInfo, "/cam2/ditta/camera_info", keep("info"), 10)
        timing = {"processing": [], "latency": []}
        node.create_subscription(Float32, "/cam2/ditta/processing_time_ms", lambda m: timing["processing"].append(m.data), 10)
        node.create_subscription(Float32, "/cam2/ditta/latency_ms", lambda m: timing["latency"].append(m.data), 10)
        assert spin_until(lambda: node.count_publishers("/cam2/ditta/semantic_color/compressed") > 0, 20)
        spin_until(lambda: False, 1.0)  # the node's side of discovery
        for sec in (4, 5):  # within 2 frames of subscribing
            send(sec)
            if spin_until(lambda: got.get("semantic"), 30):
                break
        assert got.get("semantic"), f"no label image within 2 frames of subscribing: {statuses[-1]}"
        sec = min(got["semantic"])
        for name in ("color", "jpeg", "png", "info"):
            assert spin_until(lambda: sec in got.get(name, {}), 10), f"no {name} for frame {sec}"
        assert spin_until(lambda: timing["processing"] and timing["latency"], 10)
        assert min(timing["processing"]) > 0 and min(timing["latency"]) >= min(timing["processing"]) * 0.5

        label = got["semantic"][sec]
        h, w = label.height, label.width
        assert (h, w) == tuple(model.preprocess.input_hw((180, 240))) and (h, w) != (180, 240)
        ci = got["info"][sec]
        assert ci.header.stamp == label.header.stamp and ci.header.frame_id == label.header.frame_id == "cam2_optical"
        assert (ci.height, ci.width) == (h, w) and ci.distortion_model == "plumb_bob"
        sx, sy = w / 240.0, h / 180.0
        np.testing.assert_allclose([ci.k[0], ci.k[2], ci.k[4], ci.k[5]], [200 * sx, 120 * sx, 210 * sy, 90 * sy])
        np.testing.assert_allclose([ci.p[0], ci.p[2], ci.p[5], ci.p[6]], [200 * sx, 120 * sx, 210 * sy, 90 * sy])

        ids = np.frombuffer(bytes(label.data), np.uint8).reshape(h, w)
        png = cv2.imdecode(np.frombuffer(bytes(got["png"][sec].data), np.uint8), cv2.IMREAD_UNCHANGED)
        assert "png" in got["png"][sec].format and np.array_equal(png, ids)
        color = np.frombuffer(bytes(got["color"][sec].data), np.uint8).reshape(h, w, 3)
        jpeg = cv2.imdecode(np.frombuffer(bytes(got["jpeg"][sec].data), np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
        assert got["jpeg"][sec].format.startswith("rgb8; jpeg") and jpeg.shape == color.shape
        assert np.abs(jpeg.astype(int) - color.astype(int)).mean() < 8  # lossy, but the same picture
        assert statuses[-1]["idle"] <= 4  # at most the first frame after subscribing went unprocessed

        # the camera stops (stale input: ERROR), then resumes (OK again)
        assert spin_until(lambda: diags and diags[-1].level == b"\x02" and "no image for" in diags[-1].message, 10), \
            diags[-1].message if diags else "no diagnostics"
        for sec in (30, 31, 32):
            send(sec)
            assert spin_until(lambda: sec in got["semantic"], 30)
        assert spin_until(lambda: diags[-1].level == b"\x00", 5), diags[-1].message
    finally:
        node.destroy_node()
        rclpy.shutdown()
        stop_process(proc)
    assert "Traceback" not in log_path.read_text()
