"""The package's shape: no import circle, small modules and functions, the core apart from the
tooling, and one builder of DiTTA (preset + overrides) and of the runtime options that the node,
``ditta eval`` and ``ditta suite`` all go through."""

import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parent.parent / "ditta_ros"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 120


def _modules():
    """``{dotted name: path}`` of every module of the package."""
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(name, path, modules):
    """The package modules ``name`` imports, at any depth of the file (imports inside functions
    count: they hide a circle, they do not break it). ``from .x import y`` names the module
    ``x.y`` when that is a module, else ``x``."""
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                root = base[:len(base) - node.level + 1]
                mod = ".".join(root + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _graph():
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycle(graph):
    """One import circle as a list of modules, or ``None``."""
    state, stack = {}, []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_circle_in_the_package():
    graph = _graph()
    assert "ditta_ros.live.pipeline" in graph and "ditta_ros.runtime" in graph["ditta_ros.ditta"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_core_never_imports_the_tooling():
    """The deployable core (everything but ``tools/`` and ``__main__``) never imports the tooling
    (rclpy stays in the ROS layer: ``test_packaging.test_core_never_imports_rclpy``)."""
    for name, deps in _graph().items():
        if name.startswith("ditta_ros.tools") or name == "ditta_ros.__main__":
            continue
        assert not any(d.startswith("ditta_ros.tools") for d in deps), f"{name} imports the tooling"


def test_modules_and_functions_stay_small():
    too_long = []
    for name, path in _modules().items():
        text = path.read_text()
        n = text.count("\n")
        if n > MAX_MODULE_LINES:
            too_long.append(f"{name}: {n} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}.{node.name}: {length} lines")
    assert not too_long, too_long


def test_presets_build_configs_from_overrides_and_refuse_typos():
    from ditta_ros.presets import PRESETS, DittaConfig, override_keys

    d = DittaConfig.from_preset("default")
    assert d == PRESETS["default"] and d.adapt.params == "addon" and d.max_gap == 0.2
    f = DittaConfig.from_preset("faithful", lr=0.01, iters=3, max_track=7, guard_enabled=True, tau=1, thin_px=None)
    assert (f.adapt.lr, f.adapt.iters, f.target.max_track, f.guard.enabled) == (0.01, 3, 7, True)
    assert f.tau == 1.0 and isinstance(f.tau, float) and f.target.thin_px == PRESETS["faithful"].target.thin_px
    assert DittaConfig.from_preset("default", motion_gate=1, iters=3.0).motion_gate is True
    assert {"lr", "max_track", "guard_max_changed", "tau", "fusion"} <= set(override_keys())
    for bad, msg in [({"lrr": 1}, "unknown DiTTA option 'lrr'"), ({"iters": 0}, "iters must be >= 1"),
                     ({"fusion": "pixel"}, "fusion must be one of"), ({"tau": 2.0}, "tau must lie"),
                     ({"motion_gate": "yes"}, "not a bool"), ({"iters": 2.5}, "not a int")]:
        with pytest.raises(ValueError, match=msg):
            DittaConfig.from_preset("default", **bad)
    with pytest.raises(ValueError, match="unknown preset 'best'"):
        DittaConfig.from_preset("best")
    h = f.hyper()
    assert h["adapt"]["lr"] == 0.01 and h["tau"] == 1.0 and "fusion" not in h  # frame fusion: not stored
    assert d.hyper()["fusion"] == "grid"
    # a target option newer than the stored suite runs is stored only when on (they stay comparable)
    assert "temporal_vote" not in d.hyper()["target"] and "thin_px" in d.hyper()["target"]
    assert DittaConfig.from_preset("select", temporal_vote=True).hyper()["target"]["temporal_vote"] is True


def test_runtime_options_validate_and_store_only_what_differs():
    from ditta_ros.runtime import BACKENDS, RuntimeOptions

    assert RuntimeOptions().hyper() == {}
    assert RuntimeOptions(backend="openvino").hyper() == {"backend": "openvino", "openvino_precision": "auto"}
    assert set(BACKENDS) == {"auto", "tensorrt", "openvino", "onnxruntime", "torch"}
    for bad in ({"backend": "cuda"}, {"openvino_precision": "int3"}, {"threads": -1},
                {"openvino_threads": -1}):
        with pytest.raises(ValueError):
            RuntimeOptions(**bad)


def test_node_eval_and_suite_build_the_same_method_from_the_same_preset_and_overrides(monkeypatch, tmp_path):
    """``preset faithful`` with ``lr``, ``iters`` and ``guard off``, on OpenVINO f32: the node's
    :class:`LivePipeline`, ``ditta eval`` and ``ditta suite`` hand the method the same
    :class:`DittaConfig` and the same runtime (the node's guard runs on torch, so its method's
    runtime is the node's with ``backend: torch``)."""
    import torch

    from ditta_ros.inference import ISSRunner
    from ditta_ros.iss.espnetv2 import ESPNetv2Seg
    from ditta_ros.live import LiveConfig, LivePipeline
    from ditta_ros.tools import cli, eval_args
    from ditta_ros.tools.methods import make_method
    from ditta_ros.tools.suite import build_method, parse_variant

    torch.manual_seed(0)
    runner = ISSRunner(ESPNetv2Seg(s=0.5, num_classes=5, input_size=(64, 48)).eval())
    teacher = object()
    monkeypatch.setattr(eval_args, "_teacher", lambda args: teacher)
    args = cli.build_parser().parse_args(["eval", "clip", "--model", "m", "--out", str(tmp_path), "--method", "ditta",
                                          "--preset", "faithful", "--lr", "0.01", "--iters", "3", "--no-guard",
                                          "--backend", "openvino", "--openvino-precision", "f32"])
    monkeypatch.setattr("ditta_ros.teacher.make_teacher", lambda *a, **k: teacher)  # no teacher weights needed

    live = LivePipeline(LiveConfig(preset="faithful", lr=0.01, iters=3, guard=False, backend="openvino",
                                   openvino_precision="f32"), runner)
    node = live.make_method(runner)
    ev = make_method("ditta", runner, **eval_args.method_options(args))
    suite = build_method(parse_variant("ditta@faithful:lr=0.01,iters=3,guard_enabled=false,backend=openvino,"
                                       "openvino_precision=f32"), runner, {})
    assert node.config == ev.config == suite.config
    assert node.config.adapt.lr == 0.01 and node.config.adapt.iters == 3 and not node.config.guard.enabled
    assert node.config.adapt.params == "decoder"  # the faithful preset underneath
    assert ev.runtime == suite.runtime and ev.runtime.backend == "openvino" and ev.runtime.openvino_precision == "f32"
    assert live.runtime == ev.runtime.replace(backend="openvino") and node.runtime == live.runtime.replace(backend="torch")
    assert live.serving.runtime == live.runtime and live.serving.config == node.config
    fp16 = LivePipeline(LiveConfig(fp16=True, backend="torch"), runner)
    assert fp16.runtime.fp16 and not fp16.make_method(runner).runtime.fp16  # the guard judges fp32 weights
    assert node.config.hyper(live.runtime) == ev.config.hyper(ev.runtime)
