"""The method registry takes exactly each method's options; its callers pass only those."""

import pytest

from ditta_ros.tools.methods import METHODS, accepted_options, make_method


def test_unknown_option_is_refused_and_named():
    with pytest.raises(TypeError, match=r"method 'iss' does not take option\(s\) backend, tent_iters"):
        make_method("iss", None, backend="torch", tent_iters=3)
    with pytest.raises(TypeError, match=r"'tent' does not take option\(s\) teacher; it takes: tent_lr, tent_iters"):
        make_method("tent", None, teacher=None)
    with pytest.raises(ValueError, match="unknown method 'magic'"):
        make_method("magic", None)
    assert accepted_options("iss") == () and accepted_options("zs-refine") == ("teacher",)


@pytest.mark.parametrize("method", list(METHODS))
def test_eval_cli_passes_only_the_options_a_method_takes(method, monkeypatch):
    from ditta_ros.tools import cli, eval_args

    monkeypatch.setattr(eval_args, "_teacher", lambda args: object())  # no teacher weights needed
    args = cli.build_parser().parse_args(["eval", "clip", "--model", "m", "--out", "o", "--method", method,
                                          "--iters", "2", "--tau", "0.5", "--backend", "openvino"])
    opts = eval_args.method_options(args)
    assert set(opts) <= set(accepted_options(method))
    if method in ("iss-stream", "ditta"):
        assert opts["runtime"].backend == "openvino"
    if method == "ditta":
        assert opts["config"].tau == 0.5 and opts["config"].adapt.iters == 2
        assert not opts["config"].target.temporal_vote
        voting = cli.build_parser().parse_args(["eval", "clip", "--model", "m", "--out", "o", "--method", method,
                                                "--temporal-vote", "on"])
        cfg = eval_args.method_options(voting)["config"]
        assert cfg.target.temporal_vote and all(c.target.temporal_vote for _, c in cfg.candidate_configs())
    if method == "tent":
        assert opts == {"tent_lr": None, "tent_iters": 2}


def test_suite_variants_map_to_method_options():
    from ditta_ros.runtime import RuntimeOptions
    from ditta_ros.tools.suite import RUNTIME_KEYS, parse_variant, runtime_options

    assert set(RUNTIME_KEYS) <= {f for f in RuntimeOptions.__dataclass_fields__}
    assert set(accepted_options("iss-stream")) == {"runtime"} and "runtime" in accepted_options("ditta")
    assert runtime_options(parse_variant("iss-stream:backend=openvino,fp16=true")) == \
        RuntimeOptions(backend="openvino", fp16=True)
    assert runtime_options(parse_variant("iss-stream")) == RuntimeOptions()
    with pytest.raises(ValueError, match="only ditta and oracle"):
        parse_variant("tent:backend=openvino")


def test_compare_refuses_options_of_a_method_it_does_not_run(tmp_path):
    from ditta_ros.tools.compare import run_compare

    with pytest.raises(ValueError, match="options for ditta, not among the compared methods iss"):
        run_compare(str(tmp_path / "clip"), str(tmp_path / "out"), "m", None, methods=["iss"],
                    method_options={"ditta": {"tau": 0.5}})
