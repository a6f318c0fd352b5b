"""The search-space grammar of a study and its translation into ``trial.suggest_*`` calls.

A study declares its space under ``space:``, mirroring the config tree, in the spirit of Hydra's
sweeper syntax::

    space:
      model:
        kernel_size: choice(3, 5)
        block_dropout: interval(0.0, 0.5)
        depth: int(2, 4)
        activation: choice(relu, prelu, leaky_relu)
        leaky_alpha:                      # exists only when activation is leaky_relu
          sample: log(0.001, 0.3)
          when: {model.activation: leaky_relu}
      train:
        learning_rate: log(1e-4, 1e-2)    # also tag(log, interval(1e-4, 1e-2))
        batch_size: choice(16, 32, 64)

Functions: ``choice(a, b, ...)`` (values may be numbers, names, null, or lists such as
``[32, 64]``), ``interval(lo, hi[, step=s])`` (float), ``log(lo, hi)`` (float, log scale),
``int(lo, hi[, step=s][, log])`` (both ends included), and ``tag(log, interval(lo, hi))``.
This module is the only place that calls ``trial.suggest_*``; builders never see Optuna.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sweeps.errors import ConfigError

_MISSING = object()


@dataclass(frozen=True)
class Param:
    """One searchable config key.

    Attributes:
        name: Dotted config path, e.g. ``model.kernel_size``; also the Optuna parameter name.
        kind: ``categorical``, ``float`` or ``int``.
        choices: Categorical values as the config wants them (lists allowed).
        low: Lower bound (numeric kinds).
        high: Upper bound, included.
        log: Sample on a log scale.
        step: Quantisation step, or None.
        when: Conditions ``{other_path: allowed values}`` that must all hold for this
            parameter to exist in a trial.
        expr: The declaration as written, for messages.
    """

    name: str
    kind: str
    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    when: tuple[tuple[str, tuple[Any, ...]], ...] = field(default=())
    expr: str = ""

    @property
    def encoded_choices(self) -> tuple[Any, ...]:
        """Choices as Optuna can store them: lists become their JSON text."""
        return tuple(_encode(c) for c in self.choices)

    def suggest(self, trial: Any) -> Any:
        """Asks the trial for a value of this parameter."""
        if self.kind == "categorical":
            return _decode(trial.suggest_categorical(self.name, self.encoded_choices))
        if self.kind == "int":
            step = int(self.step or 1)
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=step, log=self.log
            )
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def extremes(self) -> list[Any]:
        """The values at the edges of the range: what ``plan`` and range checks look at."""
        if self.kind == "categorical":
            return list(self.choices)
        return [self.low, self.high]

    def grid_values(self) -> list[Any]:
        """Every value, for the grid sampler; continuous ranges without a step have none."""
        if self.kind == "categorical":
            return list(self.encoded_choices)
        if self.kind == "int" and not self.log:
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.kind == "float" and self.step and not self.log:
            n = int(round((self.high - self.low) / self.step))
            return [round(self.low + i * self.step, 12) for i in range(n + 1)]
        raise ConfigError(
            f"the grid sampler needs a finite set of values, but {self.name} is {self.expr}; "
            "use choice(...), int(...) or interval(lo, hi, step=s)"
        )

    def active(self, values: Mapping[str, Any]) -> bool:
        """Whether every ``when`` condition holds for the values chosen so far."""
        return all(values.get(path, _MISSING) in allowed for path, allowed in self.when)


def _encode(value: Any) -> Any:
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "[{":
        return json.loads(value)
    return value


def parse_space(space: Mapping[str, Any] | None) -> list[Param]:
    """Parses a nested ``space:`` mapping into parameters, conditional ones after their parents.

    Raises:
        ConfigError: on a declaration that does not parse, an empty or reversed range, or a
            condition naming a parameter declared after it or not at all.
    """
    params = [_parse_leaf(path, node) for path, node in _leaves(space or {}, "")]
    names = {p.name for p in params}
    for p in params:
        for path, _ in p.when:
            if path not in names:
                raise ConfigError(
                    f"space.{p.name}: 'when' refers to {path}, which is not in the space; "
                    f"declare {path} with choice(...) too"
                )
    # Unconditional parameters first so every condition refers to a value already chosen.
    return sorted(params, key=lambda p: bool(p.when))


def _leaves(node: Mapping[str, Any], prefix: str):
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and "sample" not in value:
            yield from _leaves(value, f"{path}.")
        else:
            yield path, value


def _parse_leaf(path: str, node: Any) -> Param:
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    if isinstance(node, Mapping):
        unknown = set(node) - {"sample", "when"}
        if unknown:
            raise ConfigError(
                f"space.{path}: unknown key(s) {sorted(unknown)}; a conditional parameter "
                "takes 'sample' and 'when'"
            )
        cond = node.get("when") or {}
        if not isinstance(cond, Mapping):
            raise ConfigError(f"space.{path}.when must map a parameter to its allowed value(s)")
        when = tuple(
            (str(k), tuple(v) if isinstance(v, (list, tuple)) else (v,)) for k, v in cond.items()
        )
        node = node.get("sample")
    if not isinstance(node, str):
        raise ConfigError(
            f"space.{path}: expected an expression such as choice(3, 5) or interval(0.0, 0.5), "
            f"got {node!r}"
        )
    param = _parse_expr(path, node.strip())
    return Param(**{**param.__dict__, "when": when})


def _parse_expr(path: str, expr: str) -> Param:
    func, args, kwargs = _split_call(path, expr)
    where = f"space.{path}: {expr}"
    if func == "tag":
        if len(args) != 2 or args[0] != "log":
            raise ConfigError(f"{where}: tag() takes tag(log, interval(lo, hi))")
        inner = _parse_expr(path, str(args[1]))
        if inner.kind == "categorical":
            raise ConfigError(f"{where}: log scale applies to interval() or int(), not choice()")
        return Param(**{**inner.__dict__, "log": True, "expr": expr})
    if func == "choice":
        if not args or kwargs:
            raise ConfigError(f"{where}: choice() needs at least one value")
        return Param(path, "categorical", choices=tuple(args), expr=expr)
    if func in ("interval", "log", "int"):
        return _range_param(path, func, expr, args, kwargs)
    raise ConfigError(f"{where}: unknown function '{func}'; use choice, interval, log, int or tag")


def _range_param(path: str, func: str, expr: str, args: list, kwargs: dict) -> Param:
    where = f"space.{path}: {expr}"
    flags = [a for a in args if a == "log"]
    bounds = [a for a in args if a != "log"]
    unknown = set(kwargs) - {"step"}
    if len(bounds) != 2 or unknown:
        raise ConfigError(f"{where}: {func}() takes {func}(low, high[, step=s])")
    low, high = bounds
    if not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds):
        raise ConfigError(f"{where}: bounds must be numbers")
    if low > high:
        raise ConfigError(f"{where}: low {low} is greater than high {high}")
    log = func == "log" or bool(flags)
    if log and low <= 0:
        raise ConfigError(f"{where}: a log scale needs low > 0")
    step = kwargs.get("step")
    if step is not None and (not isinstance(step, (int, float)) or step <= 0):
        raise ConfigError(f"{where}: step must be a positive number")
    if func == "int":
        if not (float(low).is_integer() and float(high).is_integer()):
            raise ConfigError(f"{where}: int() bounds must be whole numbers")
        return Param(path, "int", low=int(low), high=int(high), log=log, step=step, expr=expr)
    return Param(path, "float", low=float(low), high=float(high), log=log, step=step, expr=expr)


def _split_call(path: str, expr: str) -> tuple[str, list[Any], dict[str, Any]]:
    """Splits ``name(a, b, k=v)`` into its parts; commas inside brackets stay together."""
    open_at = expr.find("(")
    if open_at <= 0 or not expr.endswith(")"):
        raise ConfigError(
            f"space.{path}: '{expr}' is not an expression such as choice(3, 5) or "
            "interval(0.0, 0.5)"
        )
    func, body = expr[:open_at].strip(), expr[open_at + 1 : -1]
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for piece in _top_level_split(body):
        key, sep, value = piece.partition("=")
        if sep and key.strip().isidentifier() and "(" not in key:
            kwargs[key.strip()] = _scalar(value.strip())
        elif piece.strip():
            args.append(piece.strip() if "(" in piece else _scalar(piece.strip()))
    return func, args, kwargs


def _top_level_split(body: str) -> list[str]:
    pieces, depth, start = [], 0, 0
    for i, ch in enumerate(body):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            pieces.append(body[start:i])
            start = i + 1
    pieces.append(body[start:])
    return pieces


def _scalar(text: str) -> Any:
    """Reads one value: number, bool, null, quoted or bare string, or a JSON-like list."""
    if text[:1] in "[{":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            items = _top_level_split(text[1:-1])
            return [_scalar(i.strip()) for i in items if i.strip()]
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    low = text.lower()
    if low in ("null", "none", "~"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            value = cast(text)
        except ValueError:
            continue
        if cast is float and not math.isfinite(value):
            break
        return value
    return text


def sample(trial: Any, params: list[Param]) -> dict[str, Any]:
    """Draws one value per active parameter, in order, and returns ``{path: value}``."""
    values: dict[str, Any] = {}
    for p in params:
        if p.active(values):
            values[p.name] = p.suggest(trial)
    return values


def grid_space(params: list[Param]) -> dict[str, list[Any]]:
    """The space as Optuna's GridSampler wants it: every value of every parameter."""
    return {p.name: p.grid_values() for p in params}


def signature(params: list[Param]) -> str:
    """A stable text of the space, stored on the study to refuse a changed space on resume."""
    return json.dumps(
        [[p.name, p.kind, p.encoded_choices, p.low, p.high, p.log, p.step, p.when] for p in params],
        sort_keys=True,
        default=str,
    )
