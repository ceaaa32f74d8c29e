"""Static checks of the ROS packaging: launch files parse and agree with setup.py,
config/ditta.yaml holds exactly the node's declared parameters with the same
defaults, package.xml declares the ROS dependencies the code imports."""

import ast
import os
import re
from dataclasses import fields

import yaml

from ditta_ros.live import LiveConfig
from ditta_ros.params import NodeOptions, param_specs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _declared():
    out = {f.name: f.default for f in fields(LiveConfig)}
    out.update({f.name: f.default for f in fields(NodeOptions)})
    return out


def test_params_file_matches_declared_parameters():
    with open(os.path.join(ROOT, "config", "ditta.yaml")) as f:
        params = yaml.safe_load(f)["/**"]["ros__parameters"]
    declared = _declared()
    assert set(params) == set(declared)
    for k, v in declared.items():
        assert type(params[k]) is type(v) and params[k] == v, (k, params[k], v)
    specs = param_specs()
    assert [p.name for p in specs] == list(declared) and all(p.description for p in specs)


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


def test_replay_launch_runs_the_installed_script_with_arguments_the_cli_takes():
    """replay.launch.py's player and recorder: this package's ``ditta`` script from
    ``<prefix>/lib/ditta_ros`` (not on PATH after colcon; setup.cfg installs scripts there), command lines
    the CLI parses, /ditta/status recorded, the player waiting for both subscribers and pausing while the
    node adapts; the node not lazy (it answers every frame even before it sees the recorder)."""
    from ditta_ros.tools.cli import build_parser

    assert "install_scripts=$base/lib/ditta_ros" in open(os.path.join(ROOT, "setup.cfg")).read()
    assert '"ditta = ditta_ros.tools.cli:main"' in open(os.path.join(ROOT, "setup.py")).read()
    path = os.path.join(ROOT, "launch", "replay.launch.py")
    text = open(path).read()
    assert 'ditta = PathJoinSubstitution([FindPackagePrefix("ditta_ros"), "lib", "ditta_ros", "ditta"])' in text
    assert '"lazy": False' in text
    tree = ast.parse(text, path)
    defaults = {c.args[0].value: next((k.value.value for k in c.keywords if k.arg == "default_value"
                                       and isinstance(k.value, ast.Constant)), "X")
                for c in ast.walk(tree) if isinstance(c, ast.Call) and getattr(c.func, "id", "") == "DeclareLaunchArgument"}
    cmds = []
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "ExecuteProcess":
            items = next(k.value for k in call.keywords if k.arg == "cmd").elts
            assert ast.unparse(items[0]) == "ditta"
            cmds.append([i.value if isinstance(i, ast.Constant) else defaults[i.args[0].value] for i in items[1:]])
    assert len(cmds) == 2
    args = {c[1]: build_parser().parse_args(c) for c in cmds}
    assert "/ditta/status" in args["record"].topics and "/ditta/semantic" in args["record"].topics
    play = args["play"]
    assert play.min_subscribers == 2 and play.pause_on == "ADAPTING" and play.wait_state == "STREAMING"
    for name in ("ditta.launch.py", "replay.launch.py"):
        launch = open(os.path.join(ROOT, "launch", name)).read()
        assert "SetEnvironmentVariable(name, profile) for name in profile_variables()" in launch


def test_the_fast_dds_profile_goes_under_the_names_each_distro_reads(monkeypatch):
    """Jazzy/Humble (Fast DDS 2) read FASTRTPS_DEFAULT_PROFILES_FILE, Kilted (Fast DDS 3) reads
    FASTDDS_... and warns about the old name. This environment's Fast DDS wheel decides (checked against
    its rclpy: 7.x is Jazzy); a system ROS without the wheels is told by $ROS_DISTRO."""
    from importlib import metadata

    from ditta_ros.resources import local_ros_env, profile_variables

    jazzy_wheels = metadata.version("ros-rclpy").startswith("7.")
    both = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
    assert profile_variables({}) == (both if jazzy_wheels else both[:1])
    assert profile_variables({"ROS_DISTRO": "humble" if not jazzy_wheels else "kilted"}) == profile_variables({})
    env = local_ros_env("/tmp/log", base={"PATH": "/usr/bin"})
    assert env["FASTDDS_DEFAULT_PROFILES_FILE"].endswith("fastdds_shm.xml")
    assert ("FASTRTPS_DEFAULT_PROFILES_FILE" in env) == jazzy_wheels

    def no_wheel(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", no_wheel)  # a system ROS: the distro it sourced
    assert profile_variables({"ROS_DISTRO": "jazzy"}) == both and profile_variables({"ROS_DISTRO": "humble"}) == both
    assert profile_variables({"ROS_DISTRO": "kilted"}) == both[:1] and profile_variables({}) == both[:1]


def test_package_xml_declares_imported_ros_packages():
    with open(os.path.join(ROOT, "package.xml")) as f:
        xml = f.read()
    deps = set(re.findall(r"<exec_depend>([\w]+)</exec_depend>", xml))
    src = ""
    for name in ("node.py", "tools/bag_ros.py"):
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


def test_event_callbacks_import_works_on_the_humble_module_layout(monkeypatch):
    """Humble has ``rclpy.qos_event`` and no ``rclpy.event_handler`` (Iron and later)."""
    import sys
    import types

    from ditta_ros.node import subscription_event_callbacks

    import rclpy.event_handler

    assert subscription_event_callbacks() is rclpy.event_handler.SubscriptionEventCallbacks
    humble = types.ModuleType("rclpy.qos_event")

    class SubscriptionEventCallbacks:  # stands for Humble's class
        pass

    humble.SubscriptionEventCallbacks = SubscriptionEventCallbacks
    monkeypatch.setitem(sys.modules, "rclpy.event_handler", None)  # `import` raises ImportError
    monkeypatch.setitem(sys.modules, "rclpy.qos_event", humble)
    assert subscription_event_callbacks() is SubscriptionEventCallbacks


def test_descriptors_carry_ranges_choices_and_read_only():
    from ditta_ros.node import descriptor

    specs = {p.name: p for p in param_specs()}
    d = descriptor(specs["backend"])
    assert d.read_only and "tensorrt" in d.additional_constraints and d.description
    d = descriptor(specs["tau"])
    assert d.dynamic_typing and d.floating_point_range[0].to_value == 1.0  # integers accepted for a number
    d = descriptor(specs["warmup_frames"])
    assert d.integer_range[0].from_value == 2 and d.read_only
    assert not descriptor(specs["auto_readapt"]).read_only


def test_launch_file_takes_a_namespace_and_outputs_are_relative():
    text = open(os.path.join(ROOT, "launch", "ditta.launch.py")).read()
    assert 'DeclareLaunchArgument("namespace"' in text and 'namespace=LaunchConfiguration("namespace")' in text
    node = open(os.path.join(ROOT, "ditta_ros", "node.py")).read()
    published = re.findall(r'create_publisher\(\w+, "([^"]+)"', node)
    # image_transport's layout: one base topic per image, its /compressed beside it; /diagnostics is global
    assert set(published) == {"ditta/semantic", "ditta/semantic/compressed", "ditta/semantic_color",
                              "ditta/semantic_color/compressed", "ditta/confidence", "ditta/camera_info",
                              "ditta/processing_time_ms", "ditta/latency_ms", "ditta/labels", "ditta/status",
                              "/diagnostics"}
    assert not any(t.startswith("ditta/semantic/") and t != "ditta/semantic/compressed" for t in published)


def test_node_module_holds_only_ros_io():
    """The model, mailbox, counters and statistics live in the ROS-free core."""
    path = os.path.join(ROOT, "ditta_ros", "node.py")
    tree = ast.parse(open(path).read(), path)
    classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    assert classes == ["DittaNode"]
    imported = {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in n.names} | {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"torch", "Condition", "Counters", "ISSRunner", "cv2"}, imported
    src = open(path).read()
    assert "threading.Condition" not in src and "_mailbox" not in src and "ema" not in src.lower().split()


def test_compare_does_not_import_the_cli():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import sys, ditta_ros.tools.compare; print('ditta_ros.tools.cli' in sys.modules)"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr
