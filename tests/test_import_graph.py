"""The modules of ``reid/`` import each other without a cycle, so the package reads one way.

The graph is built from the source with ``ast`` (nothing is imported). It counts every import a module
can execute: the ones at module level *and* the ones inside functions, because a lazy import is how a
cycle hides (``reid.data.datasets`` imported ``reid.data.readers`` inside ``read_dataset`` while
``readers`` imported ``datasets`` at the top). Two kinds of import are not edges:

* imports under ``if TYPE_CHECKING:``: they never run;
* the implicit import of a parent package (``import reid.data.samples`` first runs
  ``reid/__init__.py`` and ``reid/data/__init__.py``): counting it would make every package that
  re-exports one of its modules a cycle of two; a package ``__init__``'s own imports are edges like
  any other module's.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def module_names(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``package_dir`` (a package ``__init__`` by its package name)."""
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of ``tree`` except those under ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (``from a.b import c`` is ``a.b.c`` when that is a module)."""
    modules = module_names(package_dir)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in _imports(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                graph[name] |= {a.name for a in node.names if a.name in modules}
                continue
            base = node.module or ""
            if node.level:  # relative import: resolve against this module's package
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                package = package[:len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                if target in modules:
                    graph[name].add(target)
                elif base in modules:
                    graph[name].add(base)
    for name in graph:
        graph[name].discard(name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None when the graph is acyclic (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for start in sorted(graph):
        if state.get(start):
            continue
        path = [start]
        stack = [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
                continue
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_reid_has_no_import_cycle() -> None:
    graph = import_graph(REPO / "reid")
    assert "reid.data.datasets" in graph and graph["reid.data.datasets"], "the graph builder found no imports"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_data_package_reads_top_down() -> None:
    """The dataset entry point imports the readers it dispatches to; no reader imports it back."""
    graph = import_graph(REPO / "reid")
    assert {"reid.data.readers", "reid.data.layouts"} <= graph["reid.data.datasets"]
    for reader in ("reid.data.readers", "reid.data.layouts", "reid.data.pack", "reid.data.checks"):
        assert "reid.data.datasets" not in graph[reader], reader


def test_cycle_finder_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    """The check can fail: a cycle closed by an import inside a function, or a relative one, is found;
    an import under ``if TYPE_CHECKING:`` is not an edge."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import thing\n")
    (pkg / "b.py").write_text("def thing():\n    from . import a\n    return a\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import x\n")
    graph = import_graph(pkg)
    assert graph["pkg.b"] == {"pkg.a"} and graph["pkg.c"] == set()
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.a"]
    (pkg / "b.py").write_text("def thing():\n    return 1\n")
    assert find_cycle(import_graph(pkg)) is None


#: The layers of ``reid/``, lowest first. A module may import its own layer and the layers below it,
#: never one above: data flows config -> data -> models -> engine -> evaluation -> tracking at run
#: time, and the code that composes them (the engine's loop, deployment, the pipeline's comparison,
#: the commands) sits above what it composes. A module's layer is its longest matching prefix.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundation", ("reid.errors", "reid.atomic", "reid.version", "reid.config", "reid.checkpoint", "reid.parallel")),
    ("data", ("reid.data",)),
    ("models", ("reid.models", "reid.losses")),
    ("distillation", ("reid.distill",)),
    ("evaluation", ("reid.evaluation",)),
    ("tracking", ("reid.tracking",)),
    ("engine", ("reid.engine",)),
    ("deployment", ("reid.deploy",)),
    ("experiments", ("reid.seed_spread", "reid.targets", "reid.compare", "reid.sweep")),
    ("interface", ("reid.commands", "reid.cli", "reid")),
)


def layer_of(module: str) -> int | None:
    """Index in :data:`LAYERS` of ``module`` by its longest matching prefix (None: in no layer)."""
    best: tuple[int, int] | None = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (index, len(prefix))
    return None if best is None else best[0]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """``a (layer) -> b (higher layer)`` for every import against the order, and modules in no layer."""
    problems = []
    for module, imported in sorted(graph.items()):
        own = layer_of(module)
        if own is None:
            problems.append(f"{module} is in no layer of LAYERS: add it where it belongs")
            continue
        for target in sorted(imported):
            other = layer_of(target)
            if other is not None and other > own:
                problems.append(f"{module} ({LAYERS[own][0]}) imports {target} ({LAYERS[other][0]})")
    return problems


def test_reid_imports_only_downwards() -> None:
    """Checkpoint I/O below models and engine, collectives below evaluation, signals not in tracking:
    no module imports a layer above its own."""
    graph = import_graph(REPO / "reid")
    assert layer_of("reid.checkpoint") < layer_of("reid.models.pretrained") < layer_of("reid.engine.trainer")
    assert upward_imports(graph) == []


def test_layer_check_finds_an_upward_import() -> None:
    """The check can fail: models importing the engine (checkpoint I/O once lived there) is reported."""
    graph = {"reid.models.inference": {"reid.engine.state", "reid.config"}, "reid.engine.state": set(),
             "reid.config": set(), "vendored.thing": set()}
    assert upward_imports(graph) == [
        "reid.models.inference (models) imports reid.engine.state (engine)",
        "vendored.thing is in no layer of LAYERS: add it where it belongs",
    ]
