"""ditta_node over real DDS (Fast DDS from the PyPI wheels): node subprocesses get camera
frames in a namespace, adapt, save, re-adapt while the adapted model serves, reset during an
adaptation, stop on SIGTERM; start from a saved adaptation; survive bad messages; refuse bad
parameters at start-up."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
import rclpy  # noqa: E402  (make setup installs the ROS 2 wheels; no silent skip)

from conftest import make_spin_until, stop_process  # noqa: E402

MODEL = "espnetv2-s1.0-cityscapes-512x256"


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


def _start(ros_env, tmp_path, *params, ns=None):
    log_path = tmp_path / "node.log"
    # preset default (one candidate, the add-on): these tests are about the node's mechanics
    cmd = [sys.executable, "-m", "ditta_ros.node", "--ros-args", "-p", f"model:={MODEL}", "-p", "backend:=torch",
           "-p", "preset:=default",
           "-p", "status_period:=0.25", "-p", f"export_dir:={tmp_path}/export",
           "-p", f"checkpoint_dir:={tmp_path}/adapted"]
    for p in params:
        cmd += ["-p", p]
    if ns:
        cmd += ["-r", f"__ns:={ns}"]
    proc = subprocess.Popen(cmd, env=ros_env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, cwd=ROOT)
    return proc, log_path


def _frame_number(msg) -> int:
    """The frame number :meth:`_Client.send` stamped (``sec / 10`` s)."""
    return msg.header.stamp.sec * 10 + msg.header.stamp.nanosec // 100_000_000


class _Client:
    """A test node: an image publisher and subscriptions to the node's outputs under ``prefix``."""

    def __init__(self, proc, log_path, prefix="", image_topic="/camera/image_raw"):
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        self.Image = Image
        self.node = rclpy.create_node("ditta_test_client")
        self.pub = self.node.create_publisher(Image, image_topic,
                                              QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        self.got, self.color, self.statuses, self.diags = {}, {}, [], []
        self.node.create_subscription(Image, f"{prefix}/ditta/semantic",
                                      lambda m: self.got.__setitem__(_frame_number(m), m), 50)
        self.node.create_subscription(Image, f"{prefix}/ditta/semantic_color",
                                      lambda m: self.color.__setitem__(_frame_number(m), m), 50)
        self.node.create_subscription(String, f"{prefix}/ditta/status",
                                      lambda m: self.statuses.append(json.loads(m.data)), 200)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: self.diags.append(m), 50)
        self.spin_until = make_spin_until(self.node, proc, log_path)
        self.prefix = prefix

    def send(self, frame, sec, encoding="rgb8", data=None, step=None):
        """Publish frame number ``sec`` stamped ``sec / 10`` s (a 10 Hz camera)."""
        m = self.Image()
        m.header.stamp.sec, m.header.stamp.nanosec = divmod(int(sec), 10)
        m.header.stamp.nanosec *= 100_000_000
        m.header.frame_id = "cam_optical"
        m.height, m.width, m.encoding = frame.shape[0], frame.shape[1], encoding
        m.step = step if step is not None else frame.shape[1] * 3
        m.data = data if data is not None else frame.tobytes()
        self.pub.publish(m)

    def send_wait(self, frame, sec, timeout=120, **kw):
        self.send(frame, sec, **kw)
        assert self.spin_until(lambda: sec in self.got, timeout), f"no label image for stamp {sec}"
        return self.got[sec]

    def call(self, name, srv=None, data=None):
        from std_srvs.srv import Trigger

        srv = srv or Trigger
        client = self.node.create_client(srv, f"{self.prefix}/ditta_node/{name}")
        assert client.wait_for_service(timeout_sec=10), name
        req = srv.Request()
        if data is not None:
            req.data = data
        fut = client.call_async(req)
        assert self.spin_until(lambda: fut.done(), 20), name
        return fut.result()

    def status_after(self, n):
        """The first status published after ``n`` statuses had been seen."""
        assert self.spin_until(lambda: len(self.statuses) > n, 10)
        return self.statuses[-1]

    def close(self):
        self.node.destroy_node()


@contextlib.contextmanager
def _connected(proc, log_path, **client_kw):
    """A :class:`_Client` of the started node once the node subscribes to its camera topic and publishes
    status; rclpy, the client and the node process are shut down afterwards."""
    rclpy.init()
    c = None
    try:
        c = _Client(proc, log_path, **client_kw)
        assert c.spin_until(lambda: c.pub.get_subscription_count() > 0 and c.statuses, 120), \
            log_path.read_text()[-3000:]
        yield c
    finally:
        if c is not None:
            c.close()
        rclpy.shutdown()
        stop_process(proc)


def test_node_in_a_namespace_adapts_saves_readapts_resets_and_stops_on_sigterm(shared, ros_env, tmp_path):
    """/cam1: outputs under /cam1/ditta/...; the adaptation is saved on reaching STREAMING and
    by ~/save; during ~/readapt the adapted model keeps serving; ~/reset during ADAPTING stops
    that adaptation, so a ~/readapt after it never runs two; SIGTERM during ADAPTING exits
    cleanly within 10 s. Integers for doubles (warmup_seconds:=30) are accepted."""
    proc, log_path = _start(ros_env, tmp_path, "warmup_frames:=3", "iters:=1", "input_topic:=image",
                            "warmup_seconds:=30", "no_input_warn_seconds:=1", ns="/cam1")
    with _connected(proc, log_path, prefix="/cam1", image_topic="/cam1/image") as c:
        assert c.statuses[-1]["state"] == "WARMUP"
        # no image yet: the node names the publishers it sees on its input topic
        assert c.spin_until(lambda: "ditta_test_client type sensor_msgs/msg/Image reliable" in log_path.read_text(),
                            20), log_path.read_text()[-2000:]
        assert "no image on /cam1/image" in log_path.read_text()
        text = log_path.read_text()
        assert '"warmup_seconds": 30.0' in text  # the effective configuration, logged once
        frames = _frames(shared, 12)
        sec = 100
        for f in frames[:3]:
            c.send_wait(f, sec)
            sec += 1
        assert c.spin_until(lambda: c.statuses[-1]["state"] == "STREAMING", 180), c.statuses[-1]
        m = c.send_wait(frames[3], sec)
        sec += 1
        assert m.header.frame_id == "cam_optical" and m.encoding == "mono8" and (m.height, m.width) == (180, 240)
        assert c.spin_until(lambda: c.statuses[-1]["model"] == "adapted", 10)
        assert c.spin_until(lambda: sec - 1 in c.color, 10) and c.color[sec - 1].encoding == "rgb8"
        saved = c.statuses[-1]["checkpoint"]
        assert saved and os.path.isfile(saved) and saved.startswith(str(tmp_path / "adapted"))
        assert any(d.status[0].name == "/cam1/ditta_node: semantic segmentation" for d in c.diags)
        res = c.call("save")
        assert res.success and os.path.isfile(res.message)

        # re-adaptation: the adapted model serves the new warm-up and the adaptation
        assert c.call("readapt").success
        assert c.spin_until(lambda: c.statuses[-1]["state"] == "WARMUP", 10)
        for f in frames[4:7]:
            c.send_wait(f, sec)
            sec += 1
            assert c.status_after(len(c.statuses))["model"] == "adapted"
        assert c.spin_until(lambda: c.statuses[-1]["state"] in ("ADAPTING", "EXPORTING", "STREAMING"), 10)
        if c.statuses[-1]["state"] != "STREAMING":
            c.send_wait(frames[7], sec)
            sec += 1
            st = c.status_after(len(c.statuses))
            assert st["model"] == "adapted", st
        assert c.spin_until(lambda: c.statuses[-1]["state"] == "STREAMING", 180), c.statuses[-1]
        assert c.spin_until(lambda: c.statuses[-1]["checkpoint"] not in (None, saved, res.message), 10)
        assert c.statuses[-1]["warning"] is None  # the new adaptation replaced the old one (not refused)

        # reset during ADAPTING, then readapt: one adaptation at a time
        assert c.call("readapt").success
        for f in frames[8:11]:
            c.send_wait(f, sec)
            sec += 1
        assert c.spin_until(lambda: c.statuses[-1]["state"] == "ADAPTING", 10), c.statuses[-1]
        n_before = len(c.statuses)
        assert c.call("reset").success
        assert c.spin_until(lambda: c.statuses[-1]["state"] == "ISS", 10)
        assert c.call("readapt").success
        for f in frames[:3]:
            c.send_wait(f, sec)
            sec += 1
        assert c.spin_until(lambda: c.statuses[-1]["state"] == "ADAPTING"
                            and c.statuses[-1]["adaptations_running"] == 1, 60), c.statuses[-1]
        assert max(s["adaptations_running"] for s in c.statuses[n_before:]) == 1
        assert c.spin_until(lambda: "adaptation cancelled" in log_path.read_text(), 30)

        # SIGTERM while adapting: the adaptation is stopped, a clean exit within 10 s
        assert c.statuses[-1]["state"] == "ADAPTING"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(15)
        assert time.monotonic() - t0 <= 10.0 and rc == 0, log_path.read_text()[-3000:]
        text = log_path.read_text()
        assert "final status" in text and "shutting down" in text and "Traceback" not in text
        assert text.count("adaptation cancelled") == 2 and "still running at shutdown" not in text


def test_node_from_an_adapted_checkpoint_serves_any_size_and_encoding_and_recovers(shared, ros_env, tmp_path):
    """adapted_checkpoint: STREAMING from the first message, no warm-up; output_resolution
    network; mono16 input; a 1920x1080 frame (the ISS serves while the adapted model is
    prepared for it); bad messages turn the diagnostics to WARN and good ones back to OK;
    ~/enable pauses and resumes; ~/reset returns to the ISS model."""
    import copy

    from ditta_ros.adapt import DiTTANet
    from ditta_ros.checkpoint import save_adapted
    from ditta_ros.iss import load_model

    model, _ = load_model(MODEL)
    ckpt = str(tmp_path / "saved.pt")
    save_adapted(DiTTANet(copy.deepcopy(model)), ckpt, {"model": MODEL, "frame_hw": [180, 240]})
    proc, log_path = _start(ros_env, tmp_path, f"adapted_checkpoint:={ckpt}", "input_topic:=/camera/image_raw",
                            "output_resolution:=network", "tau:=1")
    with _connected(proc, log_path) as c:
        assert c.statuses[0]["state"] == "STREAMING" and c.statuses[0]["checkpoint"] == ckpt
        net_hw = model.preprocess.input_hw((180, 240))
        frames = _frames(shared, 4)
        m = c.send_wait(frames[0], 1)
        assert (m.height, m.width) == tuple(net_hw)
        assert c.spin_until(lambda: c.statuses[-1]["model"] == "adapted", 10)
        # mono16 input (a grey camera)
        grey = (frames[1].mean(axis=2) * 256).astype("<u2")
        m = c.send_wait(grey, 2, encoding="mono16", step=240 * 2, data=grey.tobytes())
        assert (m.height, m.width) == tuple(net_hw)
        # bad messages: WARN while they come, OK again after good frames
        c.send(frames[1], 3, encoding="bayer_rggb8")
        assert c.spin_until(lambda: c.statuses[-1]["bad"] >= 1, 30), c.statuses[-1]
        c.send(frames[1], 4, data=frames[1].tobytes()[:1000])
        assert c.spin_until(lambda: c.statuses[-1]["bad"] >= 2, 30), c.statuses[-1]
        # WARN (bad messages beside good output) or ERROR (a period with bad messages and no output), by timing
        assert c.spin_until(lambda: any(d.status[0].level in (b"\x01", b"\x02") for d in c.diags[-4:]), 10)
        for s in range(5, 8):
            c.send_wait(frames[s % 4], s)
        assert c.spin_until(lambda: c.diags and c.diags[-1].status[0].level == b"\x00", 10), \
            c.diags[-1].status[0].message
        # a 1920x1080 frame: served at once by the ISS, the adapted model prepared meanwhile
        import cv2

        big = np.ascontiguousarray(cv2.resize(frames[2], (1920, 1080)))
        m = c.send_wait(big, 10)
        assert (m.height, m.width) == tuple(model.preprocess.input_hw((1080, 1920)))
        assert c.spin_until(lambda: c.statuses[-1]["model"] == "iss", 10)  # the ISS while preparing
        assert c.spin_until(lambda: "adapted model ready for 1920x1080" in log_path.read_text(), 120)
        c.send_wait(big, 11)
        assert c.spin_until(lambda: c.statuses[-1]["model"] == "adapted", 10)
        # pause and resume
        assert c.call("enable", _setbool(), data=False).success
        c.send(frames[0], 20)
        c.spin_until(lambda: False, 2)
        assert 20 not in c.got and c.statuses[-1]["paused"] == 1 and c.statuses[-1]["enabled"] is False
        assert c.call("enable", _setbool(), data=True).success
        c.send_wait(frames[0], 21)
        assert c.call("reset").success
        c.send_wait(frames[0], 22)
        assert c.spin_until(lambda: c.statuses[-1]["model"] == "iss" and c.statuses[-1]["state"] == "ISS", 10)
        assert c.statuses[-1]["bad_reasons"] == {"unsupported_encoding": 1, "decode_error": 1}


def test_the_first_frame_is_answered_while_the_graph_is_exported_and_compiled(shared, ros_env, tmp_path):
    """A fresh node on OpenVINO with an empty export folder: the camera's first frame gets its label from
    torch's frame-wise ISS without waiting for the plain-ISS graph's export and compile (``iss_runtime``
    torch, that graph ``preparing``); once it is compiled the graph answers (``iss_runtime`` backend)."""
    proc, log_path = _start(ros_env, tmp_path, "adapt:=false", "backend:=openvino", "input_topic:=/camera/image_raw",
                            f"engine_cache:={tmp_path}/engines")
    with _connected(proc, log_path) as c:
        frames = _frames(shared, 2)
        c.send_wait(frames[0], 1)
        # the first status that counts the label (the node counts it just after publishing it)
        assert c.spin_until(lambda: c.statuses and c.statuses[-1]["frames_out"] >= 1, 10), c.statuses[-1:]
        first = c.statuses[-1]
        assert first["frames_out"] == 1 and first["iss_runtime"] == "torch", first
        assert c.spin_until(lambda: "ISS model on openvino" in log_path.read_text(), 120), log_path.read_text()[-3000:]
        c.send_wait(frames[1], 2)
        assert c.spin_until(lambda: c.statuses[-1]["frames_out"] >= 2, 10)
        assert c.statuses[-1]["iss_runtime"] == "backend" and c.statuses[-1]["preparing"] is None, c.statuses[-1]


def _setbool():
    from std_srvs.srv import SetBool

    return SetBool


@pytest.mark.parametrize("param, named, allowed", [
    ("backend:=bogus", "'backend'", "auto | tensorrt | openvino | onnxruntime | torch"),
    ("warmup_frames:=0", "'warmup_frames'", "an integer in [2, 10000]"),
    ("teacher_checkpoint:=/nonexistent/sam.pt", "'teacher_checkpoint'", "an existing file"),
    ("model:=no-such-model", "'model'", "a loadable model"),
])
def test_a_bad_parameter_ends_start_up_naming_it(ros_env, tmp_path, param, named, allowed):
    out = subprocess.run([sys.executable, "-m", "ditta_ros.node", "--ros-args", "-p", param], env=ros_env,
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    text = out.stdout + out.stderr
    assert out.returncode == 2, text[-2000:]
    assert f"invalid parameter {named}" in text and allowed in text and "not starting" in text, text[-2000:]
    assert "Traceback" not in text


def test_run_time_parameters_change_and_the_others_are_read_only(ros_env, tmp_path):
    """In-process node: integers are accepted for numbers; `ros2 param set` (set_parameters) of
    a read-only parameter is refused, a run-time one is applied or refused with its allowed values."""
    from rclpy.parameter import Parameter

    from ditta_ros.node import DittaNode

    rclpy.init()
    try:
        node = DittaNode(parameter_overrides=[Parameter("model", value=MODEL), Parameter("adapt", value=False),
                                              Parameter("backend", value="torch"), Parameter("tau", value=1),
                                              Parameter("export_dir", value=str(tmp_path / "export"))])
        try:
            assert node.cfg.tau == 1.0 and isinstance(node.cfg.tau, float)
            res = node.set_parameters([Parameter("backend", value="openvino")])[0]
            assert not res.successful and "read-only" in res.reason and node.cfg.backend == "torch"
            res = node.set_parameters([Parameter("auto_readapt", value=True)])[0]
            assert res.successful and node.cfg.auto_readapt
            res = node.set_parameters([Parameter("scene_change_threshold", value=2.0)])[0]
            assert not res.successful and "scene_change_threshold" in res.reason and "1" in res.reason
            assert node.cfg.scene_change_threshold == 0.35
            res = node.set_parameters([Parameter("no_input_warn_seconds", value=3)])[0]
            assert res.successful and node.health.stale_seconds == 3.0
        finally:
            node.close(1.0)
            node.destroy_node()
    finally:
        rclpy.shutdown()
