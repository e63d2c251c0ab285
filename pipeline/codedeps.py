"""The code a stage runs, derived from its imports: every project module that `stages/<kind>.py`
imports, directly or through other project modules (at module level or inside a function), with the
`__init__.py` of every package on the way and the data files that live in those packages. The graph
lists these files as the stage's code dependencies, so editing any of them makes DVC rerun the stage
— and nobody has to remember to edit a hand-written list.

Only this project's packages count (`PACKAGES`); torch, numpy and the standard library are the
environment, pinned by the install, not code dependencies.
"""
from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("guide", "params", "stages")  # what a stage may import from this project


def _module_file(name: str) -> Path | None:
    """The file of project module `name` ('stages.paths' → stages/paths.py), or None."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imported(path: Path) -> set[str]:
    """The project modules one file imports (names, resolved against its package)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                base = node.module or ""
            found.add(base)
            # `from pkg import name`: name may be a submodule
            found.update(f"{base}.{a.name}" for a in node.names if _module_file(f"{base}.{a.name}"))
    return {n for n in found if _module_file(n)}


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


@functools.cache
def code_deps(module: str) -> tuple[str, ...]:
    """Repository-relative paths of the code `module` runs (itself included), sorted."""
    if _module_file(module) is None:
        raise ValueError(f"{module!r} is not a module of this project ({', '.join(PACKAGES)})")
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        for n in _with_parents(name):  # importing a.b.c runs a/__init__.py and a/b/__init__.py
            if n not in seen and _module_file(n):
                seen.add(n)
                todo.extend(_imported(_module_file(n)))
    files = {_module_file(n) for n in seen}
    for pkg_dir in {f.parent for f in files}:  # data a package reads (e.g. guide/imagenet100_classes.txt)
        files.update(f for f in pkg_dir.iterdir() if f.is_file() and f.suffix not in (".py", ".pyc"))
    return tuple(sorted(str(f.relative_to(ROOT)) for f in files))
