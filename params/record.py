"""Which params keys a piece of code reads. `with recording(p) as keys:` collects the dotted name of
every leaf of `p` read inside the block (an attribute read, or a `model_dump` of a group, which reads
all of its leaves); `with unrecorded():` pauses it. A stage run with GUIDE_RECORD_PARAMS=FILE writes the
keys it read to FILE, so a test can hold each stage to the params the graph declares for it.
"""
from __future__ import annotations

import contextlib

from params import schema


class Recorder:
    def __init__(self, root: schema.Group):
        self.keys: set[str] = set()
        self._paths: dict[int, str] = {}
        self._walk(root, "")

    def _walk(self, group: schema.Group, prefix: str) -> None:
        self._paths[id(group)] = prefix
        for name in type(group).model_fields:
            value = object.__getattribute__(group, name)
            if isinstance(value, schema.Group):
                self._walk(value, f"{prefix}{name}.")

    def read(self, group: schema.Group, name: str) -> None:
        prefix = self._paths.get(id(group))
        if prefix is not None:  # a group of another Params object is not ours
            self.keys.add(prefix + name)

    def read_all(self, group: schema.Group) -> None:
        prefix = self._paths.get(id(group))
        if prefix is not None:
            self.keys.update(leaves(group, prefix))


@contextlib.contextmanager
def recording(root: schema.Group):
    rec = Recorder(root)
    schema._RECORDERS.append(rec)
    try:
        yield rec.keys
    finally:
        schema._RECORDERS.remove(rec)


@contextlib.contextmanager
def unrecorded():
    saved = schema._RECORDERS[:]
    schema._RECORDERS.clear()
    try:
        yield
    finally:
        schema._RECORDERS[:] = saved


def leaves(group: schema.Group, prefix: str = "") -> list[str]:
    """Every leaf key of a params tree, dotted."""
    out = []
    for name in type(group).model_fields:
        value = object.__getattribute__(group, name)
        out += leaves(value, f"{prefix}{name}.") if isinstance(value, schema.Group) else [prefix + name]
    return out
