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
RANKS = {"base": 0, "data": 1, "models": 1, "jobs": 1, "train": 2, "infer": 3, "forensics": 4, "level2": 5,
         "sim": 5, "bench": 6, "cli": 7}
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


def imports(module: str, source: str | None = None) -> list[tuple[str, bool]]:
    """(imported camid module, at module level) for every import that runs; ``if TYPE_CHECKING``
    blocks do not run. ``source``: the module's text (default: its file)."""
    path = MODULES.get(module, SRC / Path(*module.split(".")).with_suffix(".py"))
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

    visit(ast.parse(path.read_text() if source is None else source), True)
    return [(m, top) for m, top in found if m in MODULES]


def test_the_rank_table_covers_every_package():
    assert {package(m) for m in MODULES} == set(RANKS)


def rank_violations(module: str, source: str | None = None) -> list[str]:
    """Every import of ``module`` (module level or inside a function) into its own rank or above,
    from another package."""
    mine = package(module)
    bad = []
    for other, _ in imports(module, source):
        theirs = package(other)
        if theirs != mine and RANKS[theirs] >= RANKS[mine]:
            bad.append(f"{module} ({mine}, rank {RANKS[mine]}) imports {other} ({theirs}, rank {RANKS[theirs]})")
    return bad


def test_no_upward_or_sideways_import():
    bad = [line for module in MODULES for line in rank_violations(module)]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("source", [
    "def run():\n    from camid.level2 import stack\n",
    "def run():\n    from ..level2.stack import fit_stacker\n",
    "class A:\n    def run(self):\n        import camid.cli.blend\n",
    "def run():\n    if True:\n        from ..models import registry\n",  # sideways: same rank
])
def test_a_lazy_import_that_breaks_the_ranks_is_reported(source):
    """An import inside a function runs later but still ties the packages together."""
    assert rank_violations("camid.data.lazy_example", source)
    assert not rank_violations("camid.data.lazy_example", "def run():\n    from ..util import io\n")


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
    lazy = dict(imports("camid.bench.stack")) | dict(imports("camid.bench.sample"))
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


# Names inside the data folder (``camid.data.layout``): its files, and its folders as path parts.
# ``external_rules.yaml`` is left out: configs/ ships a file of that name.
DATA_FOLDER_NAMES = ("sample_submission.csv", "solution.csv", "train_devices.csv", "solution_info.csv",
                     "simulate.json", "compose.json", "external_truth.csv", "external.json")
DATA_FOLDER_DIRS = ("train", "test")


def data_folder_spellings(source: str) -> set[str]:
    """The data folder's names that ``source`` spells: a file name in a string constant or
    f-string template (docstrings excluded), a folder as ``x / "train"`` or ``"train/..."``."""
    tree = ast.parse(source)
    found = {name for s in _code_strings(tree) for name in DATA_FOLDER_NAMES if name in s}
    found |= {f"{d}/" for s in _code_strings(tree) for d in DATA_FOLDER_DIRS if s.startswith(f"{d}/")}
    found |= {f'/ "{n.right.value}"' for n in ast.walk(tree)
              if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div) and isinstance(n.right, ast.Constant)
              and n.right.value in DATA_FOLDER_DIRS}
    return found


def test_the_data_folder_names_appear_in_data_layout_only() -> None:
    owners: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        for name in data_folder_spellings(path.read_text()):
            owners.setdefault(name, set()).add(module)
    assert set(DATA_FOLDER_NAMES) <= set(owners)  # the scan sees them all
    assert {m for mods in owners.values() for m in mods} == {"camid.data.layout"}, owners


@pytest.mark.parametrize("source", [
    'p = data_dir / "test"', 'f"{data_dir}/solution.csv"', 'key = f"train/{cls}/{name}"',
    'NAMES = ("simulate.json",)', 'log(f"wrote {n} rows to sample_submission.csv")',
])
def test_a_data_folder_name_outside_layout_is_seen(source):
    assert data_folder_spellings(source)
    assert not data_folder_spellings('"""Reads DATA/solution.csv and test/."""\nsplit = df["split"] == "test"')


@pytest.mark.parametrize("module", ["camid.data.images", "camid.data.manipulations", "camid.util.io"])
def test_importing_changes_no_process_settings(module):
    """Thread counts, Pillow's pixel limit and the umask are set when a command starts."""
    import subprocess
    import sys

    code = ("import cv2, os, PIL.Image as I; before = (cv2.getNumThreads(), I.MAX_IMAGE_PIXELS); "
            f"import {module}; assert (cv2.getNumThreads(), I.MAX_IMAGE_PIXELS) == before, before")
    subprocess.run([sys.executable, "-c", code], check=True)
