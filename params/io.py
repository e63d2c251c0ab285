"""Reading and writing params.yaml; one clear message per problem, naming the field."""
from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from params.schema import Params


class ParamsError(ValueError):
    """Invalid params; the message names the file and the offending fields. Entry points exit 2."""


def _describe(err: ValidationError, source: str) -> str:
    lines, named = [], set()
    for e in err.errors():
        loc = list(e["loc"])
        items = []
        while loc and isinstance(loc[-1], int):  # an item of a list: one line for the field
            items.insert(0, loc.pop())
        field = ".".join(str(p) for p in loc)
        if field and field in named:
            continue
        named.add(field)
        msg = e["msg"].removeprefix("Value error, ")
        if items:
            msg = f"item {'.'.join(map(str, items))}: {msg}"
        if not field:  # a check across fields: its message names the fields and the values
            lines.append(f"{source}: {msg}")
            continue
        if e["type"] == "value_error" and isinstance(e.get("input"), dict):  # a check across a group's fields
            sub, sep, rest = msg.partition(": ")  # its message starts with the field it blames
            lines.append(f"{source}: {field}.{sub}: {rest}" if sep and sub.isidentifier() else f"{source}: {field}: {msg}")
            continue
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


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice in one mapping (DVC refuses such a file too)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ParamsError(f"{self.name}: key {key!r} is given twice, on line {seen[key]} and line {line}")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    write_one = "write one with `python -m params --preset NAME -o params.yaml`"
    if not path.exists():
        raise ParamsError(f"{path}: no such params file ({write_one})")
    try:
        loader = _UniqueKeyLoader(path.read_text())
        loader.name = str(path)
        try:
            raw = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if not raw:
        raise ParamsError(f"{path}: empty — DVC needs every key the stages read; {write_one}")
    return params_from_dict(raw, str(path))


def dump_params(p: Params) -> str:
    """Every key of every group, so `dvc exp run -S group.key=value` works in DVC's strict mode."""
    return yaml.safe_dump(p.model_dump(mode="json"), sort_keys=False, default_flow_style=None, width=100)
