"""The layout holds: imports run one way by the rank table (ARCHITECTURE.md), no import
cycles, and one module owns the run folder's file names."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from conftest import REPO

SRC = REPO / "src"
# Package -> rank. A module may import from its own package or from a strictly lower rank;
# the rank-0 base (errors, config, workspace, util) may import within itself.
RANKS = {"base": 0, "data": 1, "models": 1, "jobs": 1, "train": 2, "infer": 3, "forensics": 4, "level2": 5, "bench": 6,
         "cli": 7}
BASE = {"camid", "camid.errors", "camid.config", "camid.workspace", "camid.util"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted((SRC / "camid").rglob("*.py"))}


def package(module: str) -> str:
    parts = module.split(".")
    top = ".".join(parts[:2])
    return "base" if top in BASE or module == "camid" else parts[1]


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(module: str) -> list[tuple[str, bool]]:
    """(imported camid module, at module level) for every import that runs; ``if TYPE_CHECKING``
    blocks do not run."""
    path = MODULES[module]
    is_pkg = path.name == "__init__.py"
    found: list[tuple[str, bool]] = []

    def target(base: str, name: str) -> str:
        return f"{base}.{name}" if f"{base}.{name}" in MODULES else base

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if isinstance(child, ast.Import):
                found.extend((a.name, top) for a in child.names if a.name.split(".")[0] == "camid")
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    here = module.split(".") if is_pkg else module.split(".")[:-1]
                    base = ".".join(here[: len(here) - child.level + 1])
                    base = f"{base}.{child.module}" if child.module else base
                else:
                    base = child.module or ""
                if base.split(".")[0] == "camid":
                    found.extend((target(base, a.name), top) for a in child.names)
            nested = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, nested)

    visit(ast.parse(path.read_text()), True)
    return [(m, top) for m, top in found if m in MODULES]


def test_the_rank_table_covers_every_package():
    assert {package(m) for m in MODULES} == set(RANKS)


def test_no_upward_or_sideways_import():
    bad = []
    for module in MODULES:
        mine = package(module)
        for other, _ in imports(module):
            theirs = package(other)
            if theirs != mine and RANKS[theirs] >= RANKS[mine]:
                bad.append(f"{module} ({mine}, rank {RANKS[mine]}) imports {other} ({theirs}, rank {RANKS[theirs]})")
    assert not bad, "\n".join(bad)


def test_no_import_cycle() -> None:
    graph = {m: sorted({o for o, top in imports(m) if top and o != m}) for m in MODULES}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                walk(nxt, [*path, nxt])
        state[node] = 2

    for m in graph:
        if m not in state:
            walk(m, [m])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_walker_sees_relative_lazy_and_type_only_imports():
    found = dict(imports("camid.cli.predict"))
    assert found["camid.infer.predict"] is True and found["camid.jobs.backends"] is True
    lazy = dict(imports("camid.bench"))
    assert lazy["camid.level2.stack"] is False  # inside a function: ranked, but not a load-time edge
    assert "camid.data.fastjpeg" in lazy and lazy["camid.data.fastjpeg"] is False
    assert ("camid.errors", True) in imports("camid.config")


# File names inside models/<run>/fold<k>/ (and the templates of the kept checkpoints).
RUN_FOLDER_NAMES = ("last.pt", "checkpoints.json", "done.json", "skipped.csv", "log.csv", "config.yaml", "train.out")
RUN_FOLDER_TEMPLATES = re.compile(r"^(epoch|snapshot)\{\}\.pt$")


def _code_strings(tree: ast.AST) -> list[str]:
    """String constants and f-string templates (parts joined by ``{}``), docstrings excluded."""
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    out: list[str] = []
    in_fstrings: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            parts = [v.value if isinstance(v, ast.Constant) else "{}" for v in node.values]
            out.append("".join(str(p) for p in parts))
            in_fstrings.update(id(v) for v in node.values)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings \
                and id(node) not in in_fstrings:
            out.append(node.value)
    return out


def test_the_run_folder_names_appear_in_one_module_only() -> None:
    owners: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        for s in _code_strings(ast.parse(path.read_text())):
            for name in RUN_FOLDER_NAMES:
                if name in s:
                    owners.setdefault(name, set()).add(module)
            if RUN_FOLDER_TEMPLATES.match(s):
                owners.setdefault(s, set()).add(module)
    assert set(owners) == {*RUN_FOLDER_NAMES, "epoch{}.pt", "snapshot{}.pt"}  # the scan sees them all
    assert {m for mods in owners.values() for m in mods} == {"camid.train.rundir"}, owners


@pytest.mark.parametrize("module", ["camid.data.images", "camid.data.manipulations", "camid.util.io"])
def test_importing_changes_no_process_settings(module):
    """Thread counts, Pillow's pixel limit and the umask are set when a command starts."""
    import subprocess
    import sys

    code = ("import cv2, os, PIL.Image as I; before = (cv2.getNumThreads(), I.MAX_IMAGE_PIXELS); "
            f"import {module}; assert (cv2.getNumThreads(), I.MAX_IMAGE_PIXELS) == before, before")
    subprocess.run([sys.executable, "-c", code], check=True)
