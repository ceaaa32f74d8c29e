"""Static checks of the ROS packaging: launch files parse and agree with setup.py,
config/ditta.yaml holds exactly the node's declared parameters with the same
defaults, package.xml declares the ROS dependencies the code imports."""

import ast
import os
import re
from dataclasses import fields

import yaml

from ditta_ros.live import LiveConfig
from ditta_ros.node import LIVE_DESCRIPTIONS, NODE_PARAMS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _declared():
    out = {f.name: f.default for f in fields(LiveConfig)}
    out.update({k: v[0] for k, v in NODE_PARAMS.items()})
    return out


def test_params_file_matches_declared_parameters():
    with open(os.path.join(ROOT, "config", "ditta.yaml")) as f:
        params = yaml.safe_load(f)["ditta_node"]["ros__parameters"]
    declared = _declared()
    assert set(params) == set(declared)
    for k, v in declared.items():
        assert type(params[k]) is type(v) and params[k] == v, (k, params[k], v)
    assert set(LIVE_DESCRIPTIONS) == {f.name for f in fields(LiveConfig)}
    assert all(LIVE_DESCRIPTIONS.values()) and all(d for _, d in NODE_PARAMS.values())


def test_launch_files_parse_and_name_real_executables_and_files():
    with open(os.path.join(ROOT, "setup.py")) as f:
        setup = f.read()
    scripts = dict(re.findall(r'"(\w+) = ([\w.:]+)"', setup))
    assert scripts["ditta_node"] == "ditta_ros.node:main"
    for name in ("ditta.launch.py", "replay.launch.py"):
        path = os.path.join(ROOT, "launch", name)
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        funcs = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert "generate_launch_description" in funcs
        text = open(path).read()
        for exe in re.findall(r'executable="([\w]+)"', text):
            assert exe in scripts, f"{name}: unknown executable {exe}"
        for cfg in re.findall(r'"config", "([\w.]+)"', text):
            assert os.path.isfile(os.path.join(ROOT, "config", cfg)), cfg
        assert 'package="ditta_ros"' in text


def test_package_xml_declares_imported_ros_packages():
    with open(os.path.join(ROOT, "package.xml")) as f:
        xml = f.read()
    deps = set(re.findall(r"<exec_depend>([\w]+)</exec_depend>", xml))
    src = ""
    for name in ("node.py", "bag_ros.py"):
        with open(os.path.join(ROOT, "ditta_ros", name)) as f:
            src += f.read()
    imported = set(re.findall(r"^\s*from (\w+)\.(?:msg|srv|qos|node|executors|event_handler) import", src, re.M))
    imported |= set(re.findall(r"^\s*import (rclpy)", src, re.M))
    assert imported, "no ROS import found"
    assert imported <= deps, imported - deps


def test_colcon_build_installs_executables_launch_and_config(tmp_path):
    import shutil
    import subprocess
    import sys

    colcon = os.path.join(os.path.dirname(sys.executable), "colcon")
    src = tmp_path / "src" / "ditta_ros"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "bench", "results", "build",
                                                              "install", "log", "__pycache__", "*.egg-info"))
    out = subprocess.run([colcon, "build", "--packages-select", "ditta_ros"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    inst = tmp_path / "install" / "ditta_ros"
    assert (inst / "lib" / "ditta_ros" / "ditta_node").is_file()
    for rel in ("launch/ditta.launch.py", "launch/replay.launch.py", "config/ditta.yaml", "config/fastdds_shm.xml",
                "package.xml"):
        assert (inst / "share" / "ditta_ros" / rel).is_file(), rel
    assert (tmp_path / "install" / "ditta_ros" / "share" / "ament_index" / "resource_index" / "packages"
            / "ditta_ros").is_file()
