"""The bag route over real DDS: `ditta bag make` (jpeg) -> `ditta bag play` into a ditta_node
subprocess (CompressedImage input) -> `ditta bag record`; every frame gets a label image with its
header, the node adapts and streams, a corrupt JPEG is counted and skipped, `~/readapt` works."""

import json
import os
import select
import subprocess
import sys

import cv2
import rclpy

from conftest import make_spin_until, stop_process

from ditta_ros.tools import bag

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _small_clip(shared, root, n=12, hw=(180, 240)):
    src = os.path.join(shared, "data", "camvid_0016E5_15hz", "frames")
    (root / "frames").mkdir(parents=True)
    for i, name in enumerate(sorted(os.listdir(src))[:n]):
        cv2.imwrite(str(root / "frames" / f"{i:06d}.png"), cv2.resize(cv2.imread(os.path.join(src, name)), hw[::-1]))
    (root / "clip.yaml").write_text("name: small\nfps: 15\n")
    return str(root)


def test_bag_played_into_the_node_and_recorded(shared, tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import CompressedImage, Image
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    from ditta_ros.resources import local_ros_env

    env = local_ros_env(tmp_path / "log", pythonpath=ROOT)
    src = str(tmp_path / "bag")
    made = bag.make_bag(_small_clip(shared, tmp_path / "clip"), src, compressed=True, progress=False)
    topic = made["topics"][0]
    assert topic == "/camera/image_raw/compressed"
    log_path = tmp_path / "node.log"
    node_proc = subprocess.Popen(
        [sys.executable, "-m", "ditta_ros.node", "--ros-args", "-p", "model:=espnetv2-s1.0-cityscapes-512x256",
         "-p", "warmup_frames:=3", "-p", "iters:=1", "-p", "preset:=default", "-p", f"input_topic:={topic}", "-p", "compressed:=true",
         "-p", "status_period:=0.25", "-p", f"export_dir:={tmp_path}/export",
         "-p", f"checkpoint_dir:={tmp_path}/adapted"], env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    rec = str(tmp_path / "rec")
    recorder = subprocess.Popen([sys.executable, "-m", "ditta_ros", "bag", "record", bag.SEMANTIC_TOPIC,
                                 "--out", rec, "--count", "12", "--duration", "240", "--ready-topics",
                                 bag.SEMANTIC_TOPIC], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    old = dict(os.environ)
    os.environ.update(env)
    rclpy.init()
    client = rclpy.create_node("ditta_bag_test")
    statuses, diags = [], []
    try:
        client.create_subscription(String, "/ditta/status", lambda m: statuses.append(json.loads(m.data)), 50)
        client.create_subscription(DiagnosticArray, "/diagnostics", lambda m: diags.append(m), 50)
        spin_until = make_spin_until(client, node_proc, log_path)

        assert spin_until(lambda: statuses and statuses[-1]["state"] == "WARMUP", 120), log_path.read_text()[-2000:]
        # the recorder has matched the node's label publisher: the first label image is not lost to discovery
        assert select.select([recorder.stdout], [], [], 120)[0], "the recorder never matched the node's publisher"
        assert recorder.stdout.readline().startswith(bag.READY_LINE)
        player = subprocess.Popen([sys.executable, "-m", "ditta_ros", "bag", "play", src, "--lockstep",
                                   "--pause-after", "3", "--wait", "120"], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)

        assert spin_until(lambda: player.poll() is not None, 300), "player did not finish"
        out = player.stdout.read()
        assert player.returncode == 0 and "published 12 messages" in out, out
        rec_out, _ = recorder.communicate(timeout=60)
        assert recorder.returncode == 0, rec_out
        states = [s["state"] for s in statuses]
        assert states[0] == "WARMUP" and ("ADAPTING" in states or "EXPORTING" in states)
        assert spin_until(lambda: statuses and statuses[-1]["state"] == "STREAMING", 30)

        # every frame of the bag got a label image with its header stamp and frame_id
        labels = bag.read_images(rec, bag.SEMANTIC_TOPIC)
        from rosbags.rosbag2 import Reader

        ts = bag._typestore()
        with Reader(src) as r:
            stamps = [bag._stamp_ns(ts.deserialize_cdr(raw, c.msgtype)) for c, _, raw in r.messages()]
        with Reader(rec) as r:
            frame_ids = {ts.deserialize_cdr(raw, c.msgtype).header.frame_id for c, _, raw in r.messages()}
        assert sorted(labels) == sorted(stamps) and frame_ids == {"camera"}
        assert all(lab.shape == (180, 240) and lab.max() < 19 for lab in labels.values())

        # a corrupt JPEG: logged, counted, skipped; the node carries on. The recorder has ended: without a
        # subscriber to an output the node would not even decode it (lazy), so this client takes the labels
        n_idle = statuses[-1]["idle"]
        client.create_subscription(Image, "/ditta/semantic", lambda m: None, 5)
        pub = client.create_publisher(CompressedImage, topic, 10)
        assert spin_until(lambda: pub.get_subscription_count() > 0, 20)
        spin_until(lambda: False, 1.0)  # the node's side of discovery
        bad = CompressedImage()
        bad.format, bad.data = "jpeg", b"\xff\xd8\xff\xe0" + bytes(200)
        pub.publish(bad)
        assert spin_until(lambda: statuses[-1]["bad_reasons"].get("decode_error") == 1, 30), statuses[-1]
        assert statuses[-1]["idle"] == n_idle
        assert spin_until(lambda: any(kv.key == "bad_decode_error" and kv.value == "1"
                                      for d in diags[-3:] for kv in d.status[0].values), 10)
        readapt = client.create_client(Trigger, "/ditta_node/readapt")
        assert readapt.wait_for_service(timeout_sec=10)
        fut = readapt.call_async(Trigger.Request())
        assert spin_until(lambda: fut.done(), 10) and fut.result().success
        assert spin_until(lambda: statuses[-1]["state"] == "WARMUP", 10)
        assert node_proc.poll() is None and "truncated JPEG" in log_path.read_text()
    finally:
        client.destroy_node()
        rclpy.shutdown()
        os.environ.clear()
        os.environ.update(old)
        for proc in (node_proc, recorder):
            stop_process(proc, 10)
