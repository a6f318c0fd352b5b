"""The search-space grammar and its translation into Optuna suggestions."""

from __future__ import annotations

import optuna
import pytest

from sweeps.errors import ConfigError
from sweeps.space import grid_space, parse_space, sample


def _one(expr):
    (param,) = parse_space({"model": {"x": expr}})
    return param


@pytest.mark.parametrize(
    ("expr", "kind", "attrs"),
    [
        ("choice(3, 5)", "categorical", {"choices": (3, 5)}),
        (
            "choice(relu, 'prelu', null, true)",
            "categorical",
            {"choices": ("relu", "prelu", None, True)},
        ),
        ("choice([32, 64], [32, 64, 128])", "categorical", {"choices": ([32, 64], [32, 64, 128])}),
        ("interval(0.0, 0.5)", "float", {"low": 0.0, "high": 0.5, "log": False}),
        ("interval(0, 0.5, step=0.1)", "float", {"step": 0.1}),
        ("log(1e-4, 1e-2)", "float", {"low": 1e-4, "high": 1e-2, "log": True}),
        ("tag(log, interval(1e-4, 1e-2))", "float", {"log": True, "high": 1e-2}),
        ("int(2, 4)", "int", {"low": 2, "high": 4, "log": False}),
        ("int(8, 64, log)", "int", {"log": True}),
        ("int(8, 64, step=8)", "int", {"step": 8}),
    ],
)
def test_expressions_parse(expr, kind, attrs):
    param = _one(expr)
    assert param.name == "model.x" and param.kind == kind
    for key, value in attrs.items():
        assert getattr(param, key) == value


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("interval(0.5, 0.1)", "low 0.5 is greater than high 0.1"),
        ("log(0, 1)", "log scale needs low > 0"),
        ("int(1.5, 3)", "whole numbers"),
        ("choice()", "at least one value"),
        ("uniform(0, 1)", "unknown function 'uniform'"),
        ("3", "not an expression"),
        ("interval(a, b)", "bounds must be numbers"),
        ("tag(log, choice(1, 2))", "log scale applies to interval() or int()"),
    ],
)
def test_bad_expressions_name_the_key(expr, message):
    with pytest.raises(ConfigError, match="space.model.x") as err:
        _one(expr)
    assert message in str(err.value)


def test_conditional_parameter_follows_its_condition():
    params = parse_space(
        {
            "model": {
                "alpha": {"sample": "log(0.001, 0.3)", "when": {"model.activation": "leaky_relu"}},
                "activation": "choice(relu, leaky_relu)",
            }
        }
    )
    assert [p.name for p in params] == ["model.activation", "model.alpha"]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(20):
        trial = study.ask()
        values = sample(trial, params)
        assert ("model.alpha" in values) == (values["model.activation"] == "leaky_relu")
        seen.add(values["model.activation"])
        study.tell(trial, 0.0)
    assert seen == {"relu", "leaky_relu"}


def test_condition_on_an_undeclared_parameter_is_refused():
    with pytest.raises(ConfigError, match="not in the space"):
        parse_space({"model": {"alpha": {"sample": "log(0.1, 0.3)", "when": {"model.act": "x"}}}})


def test_list_choices_round_trip_through_optuna():
    params = parse_space({"model": {"filters": "choice([32, 64], [16, 32, 64])"}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    values = {tuple(sample(study.ask(), params)["model.filters"]) for _ in range(10)}
    assert values == {(32, 64), (16, 32, 64)}


def test_grid_needs_finite_values():
    params = parse_space(
        {"model": {"k": "choice(3, 5)", "d": "int(1, 3)", "p": "interval(0, 0.5, step=0.25)"}}
    )
    assert grid_space(params) == {
        "model.k": [3, 5],
        "model.d": [1, 2, 3],
        "model.p": [0.0, 0.25, 0.5],
    }
    with pytest.raises(ConfigError, match="grid sampler"):
        grid_space(parse_space({"model": {"p": "interval(0, 0.5)"}}))
