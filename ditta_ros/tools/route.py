"""The ROS route as three processes over real DDS: ``ditta bag play`` -> ``ditta_node`` -> ``ditta bag record``.

One place for what the demo (``ditta demo``), the labelled-clip comparison
(``ditta compare``) and ``bench/bag_route.py`` all do: start the node with its
parameters, start a recorder, replay a bag into them, stop everything cleanly and
collect the node's final status. This module starts processes only; it does not
import rclpy itself.

Replay discipline (found the hard way, see the issue-5 note):

* the player starts once the recorder has matched the node's outputs (``bag record
  --ready-topics``), else the recording can miss the first label image, and then waits until
  every topic has ``min_subscribers`` (the node and the recorder), else the node misses the
  first frames;
* ``pause_after = warm-up frames``: the player pauses until ``/ditta/status`` says
  STREAMING, so no frame arrives while the node adapts (an unhurried replay);
* ``lockstep``: each frame waits for its label image, so a slow node drops nothing.
  Without it the bag plays at ``rate`` x its own rate and a slow node drops
  frames, as it would on a live camera (counted in the node's status).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Dict, Iterable, Mapping, Optional

from .bag import READY_LINE, SEMANTIC_TOPIC, image_topics

log = logging.getLogger("ditta.route")


def pick_image_topic(bag: str, topic: Optional[str] = None) -> Dict[str, object]:
    """The camera topic of ``bag``: ``topic`` if given, else the image topic (raw or
    compressed) with the most messages, skipping ``/ditta/*`` topics.

    Returns:
        ``{"topic", "msgtype", "count", "compressed"}``.

    Raises:
        FileNotFoundError: not a rosbag2 folder; KeyError: ``topic`` absent or no image topic.
    """
    topics = image_topics(bag)
    if topic is None:
        camera = {t: v for t, v in topics.items() if not t.startswith("/ditta/")}
        if not camera:
            raise KeyError(f"{bag} has no sensor_msgs/Image or CompressedImage topic (has {sorted(topics)})")
        topic = max(camera, key=lambda t: camera[t]["count"])
    if topic not in topics:
        raise KeyError(f"image topic {topic} not in {bag} (image topics: {sorted(topics)})")
    info = dict(topics[topic])
    return {"topic": topic, **info, "compressed": info["msgtype"].endswith("CompressedImage")}


def _param_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str) and v == "":
        return '""'
    return str(v)


def node_command(params: Mapping[str, object], params_file: Optional[str] = None) -> list:
    """``python -m ditta_ros.node --ros-args [--params-file F] -p k:=v ...`` (overrides win over the file)."""
    cmd = [sys.executable, "-m", "ditta_ros.node", "--ros-args"]
    if params_file:
        cmd += ["--params-file", params_file]
    for k, v in params.items():
        cmd += ["-p", f"{k}:={_param_value(v)}"]
    return cmd


def final_status(node_log: str) -> Dict[str, object]:
    """The JSON status the node logs on shutdown (``final status: {...}``), or ``{}``."""
    last: Dict[str, object] = {}
    if os.path.isfile(node_log):
        with open(node_log, errors="replace") as f:
            for line in f:
                if "final status: " in line:
                    last = json.loads(line.split("final status: ", 1)[1])
    return last


def _tail(path: str, lines: int = 15) -> str:
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-lines:])


def _forward(path: str, seen: int) -> int:
    """Log the node's new ``ditta.*`` / warning lines (adaptation progress) after line ``seen``."""
    with open(path, errors="replace") as f:
        lines = f.readlines()
    for line in lines[seen:]:
        if "ditta." in line or "WARN" in line or "ERROR" in line:
            log.info("node | %s", line.rstrip())
    return len(lines)


def _stop(proc: subprocess.Popen, grace: float = 30.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(rec_out, recorder: subprocess.Popen, node: subprocess.Popen, node_log: str,
                timeout: float) -> None:
    """Wait until the recorder prints :data:`~ditta_ros.tools.bag.READY_LINE` (it has matched the
    node's output publishers). After ``timeout`` s it logs a warning and goes on, as the player
    does for its subscribers.

    Raises:
        RuntimeError: the node or the recorder exited meanwhile (with the node log's tail).
    """
    end = time.monotonic() + timeout
    fd = rec_out.fileno()
    while time.monotonic() < end:
        # pread: the recorder shares this file's offset, which a seek would move under its writes
        if READY_LINE.encode() in os.pread(fd, os.fstat(fd).st_size, 0):
            return
        for name, proc in (("ditta_node", node), ("bag record", recorder)):
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with code {proc.returncode} before the replay began:\n"
                                   + _tail(node_log))
        time.sleep(0.2)
    log.warning("the recorder has not matched the node's outputs within %.0f s; playing anyway", timeout)


def run_route(src_bag: str, rec_bag: str, env: Mapping[str, str], node_log: str,
              node_params: Optional[Mapping[str, object]] = None, params_file: Optional[str] = None,
              image_topic: Optional[str] = None, pause_after: int = 0, lockstep: bool = True, rate: float = 1.0,
              pause_on: str = "",
              record: Iterable[str] = (SEMANTIC_TOPIC,), record_input: bool = True, wait_subscribers: float = 180.0,
              timeout: float = 3600.0, progress: bool = False) -> Dict[str, object]:
    """Replay ``src_bag`` into a ``ditta_node`` subprocess and record its output.

    Args:
        src_bag: rosbag2 folder with a camera topic (raw or compressed).
        rec_bag: folder for the recording (must not exist).
        env: process environment (see :func:`ditta_ros.resources.local_ros_env`).
        node_log: file for the node's stdout/stderr (kept: the node's own account).
        node_params: ``-p`` overrides; ``input_topic`` and ``compressed`` are set
            from the bag unless given, ``lazy`` is false unless given (an evaluation answers every
            frame, also before the node has seen the recorder's subscription) and ``wait_for_backend``
            true (every label from the serving graph, as offline evaluation scores it).
        params_file: a ``--params-file`` (e.g. ``config/ditta.yaml``).
        image_topic: camera topic of the bag (default: :func:`pick_image_topic`).
        pause_after: pause the replay after N frames until the node streams
            (use the warm-up length); 0 = no pause.
        lockstep, rate: replay discipline (module docstring); ``pause_on``: pause the replay while
            the node reports this state (``ADAPTING``: a live camera that waits for the adaptation).
        progress: show the player's progress bar and forward the node's adaptation
            log lines (``ditta.*`` loggers, warnings) to this process's log.
        record: output topics to record; ``record_input`` adds the camera topic
            (needed for the latency: same-stamp receive times on one clock).

    Returns:
        ``{"published", "recorded" (messages per topic), "node_status" (final status),
        "image_topic", "wall_seconds"}``.

    Raises:
        RuntimeError: the player or the recorder failed (their output is in the message).
        FileExistsError: ``rec_bag`` exists.
    """
    if os.path.exists(rec_bag):
        raise FileExistsError(f"recording {rec_bag} exists; remove it first")
    cam = pick_image_topic(src_bag, image_topic)
    params = {"input_topic": cam["topic"], "compressed": cam["compressed"], "lazy": False, "wait_for_backend": True,
              **dict(node_params or {})}
    topics = ([cam["topic"]] if record_input else []) + [t for t in record if t != cam["topic"]]
    t0 = time.monotonic()
    with open(node_log, "w") as log_file:
        node = subprocess.Popen(node_command(params, params_file), env=dict(env), stdout=log_file,
                                stderr=subprocess.STDOUT)
        # outputs go to files, not pipes: a pipe nobody reads until the end can fill up and block the process
        rec_out, play_out = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        outputs = [t for t in topics if t != cam["topic"]]
        recorder = subprocess.Popen([sys.executable, "-m", "ditta_ros", "bag", "record", *topics, "--out", rec_bag,
                                     "--duration", str(timeout), "--ready-topics", *outputs], env=dict(env),
                                    stdout=rec_out, stderr=subprocess.STDOUT)
        try:
            _wait_ready(rec_out, recorder, node, node_log, wait_subscribers)
            cmd = [sys.executable, "-m", "ditta_ros", "bag", "play", src_bag, "--rate", str(rate),
                   "--topics", cam["topic"], "--wait", str(wait_subscribers), "--min-subscribers", "2"]
            if pause_after:
                cmd += ["--pause-after", str(pause_after)]
            if lockstep:
                cmd += ["--lockstep"]
            if pause_on:
                cmd += ["--pause-on", pause_on]
            if progress:
                cmd += ["--progress"]
            log.info("replaying %d frames of %s into ditta_node (%s)", cam["count"], cam["topic"],
                     "lockstep" if lockstep else f"rate x{rate}")
            player = subprocess.Popen(cmd, env=dict(env), stdout=play_out,
                                      stderr=None if progress else subprocess.STDOUT)
            seen = 0
            deadline = time.monotonic() + timeout
            while player.poll() is None:  # a node that dies (missing weights, crash) must not leave us waiting
                if node.poll() is not None:
                    player.kill()
                    raise RuntimeError(f"ditta_node exited with code {node.returncode} before the replay ended:\n"
                                       + _tail(node_log))
                if time.monotonic() > deadline:
                    player.kill()
                    raise RuntimeError(f"the replay did not finish within {timeout} s; node log {node_log}")
                if progress:
                    seen = _forward(node_log, seen)
                time.sleep(0.5)
            play_out.seek(0)
            played = play_out.read()
            if player.returncode:
                raise RuntimeError(f"bag play failed (exit {player.returncode}); node log: {node_log}\n" + played)
            published = int(played.split("published ")[1].split()[0])
            time.sleep(1.0 if lockstep else 5.0)  # the last label image(s) still in flight
        finally:
            _stop(recorder)
            _stop(node)  # the node logs its final status on SIGINT
    rec_out.seek(0)
    out = rec_out.read()
    rec_out.close()
    play_out.close()
    recorded: Dict[str, int] = {}
    for line in out.splitlines():
        if line.startswith("{") and '"messages"' in line:
            recorded = json.loads(line)["messages"]
    if not recorded:
        raise RuntimeError(f"bag record wrote nothing usable to {rec_bag}:\n{out}")
    return {"published": published, "recorded": recorded, "node_status": final_status(node_log),
            "image_topic": cam["topic"], "wall_seconds": round(time.monotonic() - t0, 1)}
