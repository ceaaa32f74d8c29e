"""ditta_node over real DDS (Fast DDS from the PyPI wheels): a node subprocess gets
camera frames, adapts, streams, survives bad messages and re-adapts on request."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
import rclpy  # noqa: E402  (make setup installs the ROS 2 wheels; no silent skip)

from conftest import make_spin_until  # noqa: E402


@pytest.fixture(scope="module")
def ros_env(tmp_path_factory):
    from ditta_ros.resources import local_ros_env

    env = local_ros_env(tmp_path_factory.mktemp("roslog"), pythonpath=ROOT)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _frames(shared, n, hw=(180, 240)):
    import cv2

    folder = os.path.join(shared, "data", "camvid_0016E5_15hz", "frames")
    names = sorted(os.listdir(folder))[:n]
    return [np.ascontiguousarray(cv2.resize(cv2.imread(os.path.join(folder, f)), hw[::-1])[:, :, ::-1])
            for f in names]


def test_node_adapts_streams_survives_bad_messages_and_readapts(shared, ros_env, tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    log_path = tmp_path / "node.log"
    node_proc = subprocess.Popen(
        [sys.executable, "-m", "ditta_ros.node", "--ros-args", "-p", "model:=espnetv2-s1.0-cityscapes-512x256",
         "-p", "warmup_frames:=3", "-p", "iters:=1", "-p", "backend:=torch", "-p", "input_topic:=/camera/image_raw",
         "-p", "publish_confidence:=true", "-p", "status_period:=0.25", "-p", f"export_dir:={tmp_path}/export"],
        env=ros_env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, cwd=ROOT)
    rclpy.init()
    node = rclpy.create_node("ditta_test_client")
    got, conf, statuses, diags = {}, {}, [], []
    try:
        pub = node.create_publisher(Image, "/camera/image_raw", QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        node.create_subscription(Image, "/ditta/semantic", lambda m: got.__setitem__(m.header.stamp.sec, m), 50)
        node.create_subscription(Image, "/ditta/semantic/confidence",
                                 lambda m: conf.__setitem__(m.header.stamp.sec, m), 50)
        node.create_subscription(String, "/ditta/status", lambda m: statuses.append(json.loads(m.data)), 50)
        node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: diags.append(m), 50)
        client = node.create_client(Trigger, "/ditta_node/readapt")

        spin_until = make_spin_until(node, node_proc, log_path)

        assert spin_until(lambda: pub.get_subscription_count() > 0 and statuses, 120), log_path.read_text()[-3000:]
        assert statuses[-1]["state"] == "WARMUP"

        def send(frame, sec, encoding="rgb8", data=None, step=None):
            m = Image()
            m.header.stamp.sec, m.header.frame_id = sec, "cam_optical"
            m.height, m.width, m.encoding = frame.shape[0], frame.shape[1], encoding
            m.step = step if step is not None else frame.shape[1] * 3
            m.data = data if data is not None else frame.tobytes()
            pub.publish(m)

        frames = _frames(shared, 12)
        sec = 100
        for f in frames:  # one at a time: the node drops frames that arrive while it is busy
            send(f, sec)
            assert spin_until(lambda: sec in got, 120), f"no label image for stamp {sec}"
            sec += 1
        states = [s["state"] for s in statuses]
        assert "ADAPTING" in states or "EXPORTING" in states
        assert spin_until(lambda: statuses[-1]["state"] == "STREAMING", 180), statuses[-1]
        send(frames[0], sec)
        assert spin_until(lambda: sec in got, 60)
        sec += 1
        for s, m in got.items():  # header copied, mono8 labels of the input's size
            assert m.header.frame_id == "cam_optical" and m.encoding == "mono8" and (m.height, m.width) == (180, 240)
            assert max(m.data) < 20
        assert all(conf[s].encoding == "mono8" for s in conf)

        # bad messages: unknown encoding, truncated data, a size change; the node carries on
        send(frames[1], sec, encoding="bayer_rggb8")
        assert spin_until(lambda: statuses[-1]["bad"] >= 1, 30), statuses[-1]
        send(frames[1], sec + 1, data=frames[1].tobytes()[:1000])
        assert spin_until(lambda: statuses[-1]["bad"] >= 2, 30), statuses[-1]
        small = np.ascontiguousarray(frames[2][:120, :160])
        send(small, sec + 2)
        assert spin_until(lambda: (sec + 2) in got, 120)
        assert (got[sec + 2].height, got[sec + 2].width) == (120, 160)
        assert statuses[-1]["bad_reasons"].get("unsupported_encoding") == 1
        assert statuses[-1]["bad_reasons"].get("decode_error") == 1
        assert spin_until(lambda: any(kv.key == "bad" and int(kv.value) >= 2 for d in diags[-3:]
                                      for kv in d.status[0].values), 10)
        assert (sec not in got) and ((sec + 1) not in got)

        # re-adaptation on request
        assert client.wait_for_service(timeout_sec=10)
        fut = client.call_async(Trigger.Request())
        assert spin_until(lambda: fut.done(), 10) and fut.result().success
        assert spin_until(lambda: statuses[-1]["state"] == "WARMUP", 10)
        assert node_proc.poll() is None
        text = log_path.read_text()
        assert "unsupported image encoding 'bayer_rggb8'" in text
        assert "frame size changed" in text
    finally:
        node.destroy_node()
        rclpy.shutdown()
        node_proc.terminate()
        try:
            node_proc.wait(10)
        except subprocess.TimeoutExpired:
            node_proc.kill()
