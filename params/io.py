"""Reading and writing params.yaml; one clear message per problem, naming the field."""
from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from params.schema import Params


class ParamsError(ValueError):
    """Invalid params; the message names the file and the offending fields. Entry points exit 2."""


def _describe(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        got = "" if e["type"] == "missing" else f" (got {e['input']!r})"
        if e["type"] == "extra_forbidden":
            msg, got = "unknown key", ""
        lines.append(f"{source}: {field}: {msg}{got}")
    return "\n".join(lines)


def params_from_dict(raw: dict, source: str = "params") -> Params:
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of params groups, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_describe(err, source)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: no such params file (write one with `python -m params --preset NAME`)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    return params_from_dict(raw or {}, str(path))


def dump_params(p: Params) -> str:
    """Every key of every group, so `dvc exp run -S group.key=value` works in DVC's strict mode."""
    return yaml.safe_dump(p.model_dump(mode="json"), sort_keys=False, default_flow_style=None, width=100)
