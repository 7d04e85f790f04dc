"""The import graph of ``lra/`` and ``attention_variants/``, built from the source with ``ast``: no cycle.

Every ``import`` and ``from ... import`` counts as an edge, at module level and inside functions
alike (a lazy import is still a dependency); relative imports are resolved against the importing
module's package; ``from package import name`` is an edge to ``package.name`` when that is a module,
else to ``package``. Imports of modules outside the two packages are not edges. Dynamic imports
(``importlib.import_module``) are not seen.
"""
from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("lra", "attention_variants")

#: lra.training's modules in the order its docstring lists them: each imports only earlier ones
TRAINING_ORDER = ("state", "verdict", "curves", "optim", "step", "token_task", "config", "pretrain", "finetune",
                  "lr_sweep", "job")


def modules_of(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """Dotted module name -> source file, for every ``.py`` file under ``root/<package>``."""
    out = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _base(module: str, is_package: bool, level: int) -> str:
    """The package a relative import of ``level`` dots in ``module`` starts from."""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        parts = parts[:len(parts) - (level - 1)]
    return ".".join(parts)


def import_edges(root: Path, packages=PACKAGES) -> dict[str, dict[str, int]]:
    """``{importer: {imported: line}}`` between the modules of ``packages`` (see the module docstring)."""
    modules = modules_of(root, packages)
    edges: dict[str, dict[str, int]] = {m: {} for m in modules}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = node.module or ""
                if node.level:
                    base = _base(module, is_package, node.level)
                    source = f"{base}.{source}" if source else base
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    targets.append(submodule if submodule in modules else source)
            for target in targets:
                while target and target not in modules:  # `import a.b.c` of a non-module c: its package
                    target = target.rpartition(".")[0]
                if target and target != module:
                    edges[module].setdefault(target, node.lineno)
    return edges


def cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle ``[a, b, ..., a]`` per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, {})):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return [_cycle_in(edges, set(c)) for c in components]


def _cycle_in(edges: dict[str, dict[str, int]], component: set[str]) -> list[str]:
    """A shortest cycle through the first module of a strongly connected component (breadth-first)."""
    start = min(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(edges[v]):
            if w == start:
                return paths[v] + [start]
            if w in component and w not in paths:
                paths[w] = paths[v] + [w]
                queue.append(w)
    raise AssertionError(f"no cycle through {start}")  # unreachable for a strongly connected component


def describe(cycle: list[str], edges: dict[str, dict[str, int]], modules: dict[str, Path]) -> str:
    """``a -> b -> a`` with the file and line of each import."""
    hops = [f"{a} -> {b} ({modules[a].relative_to(REPO) if modules[a].is_relative_to(REPO) else modules[a].name}"
            f":{edges[a][b]})" for a, b in zip(cycle, cycle[1:])]
    return " -> ".join(cycle) + "\n    " + "\n    ".join(hops)


# ----------------------------------------------------------------------------- the source tree

def test_no_import_cycle_in_lra_or_attention_variants():
    edges = import_edges(REPO)
    modules = modules_of(REPO)
    found = cycles(edges)
    assert not found, "import cycles:\n" + "\n".join(describe(c, edges, modules) for c in found)


def test_the_graph_sees_the_imports_it_should():
    """Guards against a graph that passes because it is empty: known edges of each kind are present."""
    edges = import_edges(REPO)
    assert "lra.training.pretrain" in edges["lra.training.finetune"]       # from . import pretrain
    assert "lra.training.state" in edges["lra.training.step"]               # from .state import ...
    assert "lra.tasks" in edges["lra.cli.data"]                             # from .. import conf_dir, tasks
    assert "attention_variants" in edges["lra.model"]                       # import attention_variants as av
    assert "lra.devices" in edges["lra.results"]                            # inside a function


def test_training_modules_import_only_the_ones_listed_before_them():
    """lra/training/__init__.py's map: state, optim, step, token_task, config, pretrain, finetune, lr_sweep, job; the
    self-pretraining loop never imports the supervised one."""
    edges = import_edges(REPO)
    for i, name in enumerate(TRAINING_ORDER):
        inside = {t.rpartition(".")[2] for t in edges[f"lra.training.{name}"] if t.startswith("lra.training.")}
        assert inside <= set(TRAINING_ORDER[:i]), (name, sorted(inside - set(TRAINING_ORDER[:i])))
        assert not any(t.startswith(("lra.cli", "lra.bench")) for t in edges[f"lra.training.{name}"]), name


# ----------------------------------------------------------------------------- the checker itself

def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


@pytest.mark.parametrize("b_source", [
    "import pkg.a\n",                                     # absolute, module level
    "def f():\n    from . import a\n",                    # relative, inside a function
    "def f():\n    from .a import thing\n",               # a name from a relative module
    "class C:\n    def m(self):\n        from pkg.sub import x\n",  # via a package __init__
])
def test_a_cycle_is_found_and_named(tmp_path, b_source):
    _write(tmp_path, {"pkg/__init__.py": "", "pkg/a.py": "from .b import helper\nthing = 1\n",
                      "pkg/b.py": b_source + "helper = 2\n",
                      "pkg/sub/__init__.py": "from ..a import thing as x\n"})
    edges = import_edges(tmp_path, ("pkg",))
    found = cycles(edges)
    assert found, edges
    assert found[0][0] == found[0][-1] and {"pkg.a", "pkg.b"} <= set(found[0])
    text = describe(found[0], edges, modules_of(tmp_path, ("pkg",)))
    assert "pkg.a -> pkg.b" in text and "a.py:1" in text


def test_relative_imports_resolve_against_the_package(tmp_path):
    _write(tmp_path, {"pkg/__init__.py": "from .sub import y\n", "pkg/sub/__init__.py": "from . import leaf\n",
                      "pkg/sub/leaf.py": "from ..top import z\n", "pkg/top.py": "import json\n"})
    edges = import_edges(tmp_path, ("pkg",))
    assert edges == {"pkg": {"pkg.sub": 1}, "pkg.sub": {"pkg.sub.leaf": 1}, "pkg.sub.leaf": {"pkg.top": 1},
                     "pkg.top": {}}
    assert cycles(edges) == []
