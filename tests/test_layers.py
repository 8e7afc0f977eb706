"""The package's import graph points down: a module imports only from its own layer or a
lower one (:data:`LAYERS`), and no fedad modules import each other in a cycle."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fedad"

LAYERS = {
    "fedad.errors": 0, "fedad.config": 0, "fedad.progress": 0, "fedad.device": 0,
    "fedad.data": 1, "fedad.components": 1, "fedad.privacy": 1, "fedad.features": 1,
    "fedad.diffusion": 1, "fedad.rowfed": 1,
    "fedad.detectors": 2, "fedad.exchanges": 2,
    "fedad.evaluation": 3,
    "fedad.refinements": 4,
    "fedad.federation": 5,
    "fedad.export": 6,
    "fedad.cli": 7,
}
"""Each top-level part of ``fedad`` and its layer, lowest first: the core (errors, config,
progress, device), then what works on plain data and tensors, the detectors, their
evaluation, the refinements of their maps, the federation engine, export and the entry
points. A module may import from its own layer or a lower one only."""

# imports that point up and are being removed: (importing module, imported module), each
# matching the module and every module under it
PENDING: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    """``fedad/x/y.py`` -> ``fedad.x.y``; ``fedad/x/__init__.py`` -> ``fedad.x``."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    """Every module of the package by name."""
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(node: ast.AST, name: str, is_package: bool
             ) -> Iterator[tuple[str, tuple[str, ...], int]]:
    """``(module, names, line)`` of every import under ``node`` (at module level and in
    functions; ``names`` of a ``from`` import, empty for ``import module``), skipping the
    bodies of ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield from _imports(other, name, is_package)
        elif isinstance(child, ast.Import):
            for alias in child.names:
                yield alias.name, (), child.lineno
        elif isinstance(child, ast.ImportFrom):
            module = child.module or ""
            if child.level:  # relative: resolve against the importing module's package
                base = name.split(".")
                base = base[:len(base) - child.level + (1 if is_package else 0)]
                module = ".".join([*base, module] if module else base)
            yield module, tuple(a.name for a in child.names), child.lineno
        else:
            yield from _imports(child, name, is_package)


def _resolve(module: str, known: set[str]) -> str | None:
    """The fedad module that importing ``module`` runs: itself, else the deepest package
    above it that exists (``fedad.x`` is ``fedad/x/__init__.py``)."""
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in known:
            return ".".join(parts[:i])
    return None


def import_edges() -> dict[str, dict[str, tuple[Path, int]]]:
    """``{module: {imported fedad module: (file, line of its first import)}}``:
    ``from fedad.x import y`` imports the module ``fedad.x.y`` when there is one, else the
    package ``fedad.x`` (its ``__init__.py``)."""
    known = modules()
    edges: dict[str, dict[str, tuple[Path, int]]] = {}
    for name, path in known.items():
        out = edges.setdefault(name, {})
        tree = ast.parse(path.read_text(), filename=str(path))
        for module, names, line in _imports(tree, name, path.name == "__init__.py"):
            if module != "fedad" and not module.startswith("fedad."):
                continue
            submodules = [f"{module}.{n}" for n in names if f"{module}.{n}" in known]
            targets = submodules if names and len(submodules) == len(names) else \
                [*submodules, _resolve(module, set(known))]
            for target in targets:
                if target is not None and target != name:
                    out.setdefault(target, (path, line))
    return edges


def is_config_section(module: str) -> bool:
    """A method's config section beside its code (``fedad/<part>/.../config.py``, outside
    ``fedad.config``): plain dataclasses composed into the run config, so layer 0 wherever
    their folder is."""
    parts = module.split(".")
    return len(parts) > 2 and parts[-1] == "config" and parts[1] != "config"


def layer(module: str) -> int | None:
    if is_config_section(module):
        return LAYERS["fedad.config"]
    return LAYERS.get(".".join(module.split(".")[:2]))


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def pending(source: str, target: str) -> bool:
    return any(_under(source, s) and _under(target, t) for s, t in PENDING)


def upward_imports(edges: dict[str, dict[str, tuple[Path, int]]]) -> list[str]:
    """One line per import into a higher layer (not :data:`PENDING`)."""
    bad = []
    for source, targets in edges.items():
        for target, (path, line) in targets.items():
            low, high = layer(source), layer(target)
            if low is not None and high is not None and high > low \
                    and not pending(source, target):
                bad.append(f"{path.relative_to(ROOT)}:{line}: {source} (layer {low}) imports "
                           f"{target} (layer {high})")
    return sorted(bad)


def cycles(edges: dict[str, dict[str, tuple[Path, int]]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm),
    each as a closed path ``a -> b -> ... -> a`` through its imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:  # the package is small: recursion is deep enough
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return [_cycle_in(sorted(c)[0], c, edges) for c in components]


def _cycle_in(start: str, component: set[str],
              edges: dict[str, dict[str, tuple[Path, int]]]) -> list[str]:
    """A shortest closed path from ``start`` back to itself inside ``component``."""
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(edges[v]):
                if w == start:
                    path = [start]
                    while v != start:
                        path.append(v)
                        v = parent[v]
                    return [start, *reversed(path[1:]), start]
                if w in component and w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{start} is in no cycle of {sorted(component)}")


def describe(cycle: list[str], edges: dict[str, dict[str, tuple[Path, int]]]) -> str:
    """``a (fedad/a.py:3) -> b (fedad/b.py:7) -> a``: each import with where it is."""
    steps = []
    for a, b in zip(cycle, cycle[1:], strict=False):
        path, line = edges[a][b]
        steps.append(f"{a} ({path.relative_to(ROOT)}:{line})")
    return " -> ".join([*steps, cycle[-1]])


def test_every_part_of_the_package_has_a_layer():
    parts = {".".join(name.split(".")[:2]) for name in modules() if name != "fedad"}
    assert not parts - set(LAYERS), f"no layer in LAYERS for {sorted(parts - set(LAYERS))}"


def test_imports_point_down_only():
    bad = upward_imports(import_edges())
    assert not bad, "imports into a higher layer:\n  " + "\n  ".join(bad)


def test_config_sections_load_without_their_folders_code():
    """Importing ``fedad.detectors.asymst.config`` runs ``fedad/detectors/__init__.py`` and
    ``fedad/detectors/asymst/__init__.py`` first: a config section is layer 0 only when every
    package above it imports nothing of fedad (else loading the run config would load the
    detectors, and a detector that imports the schema would find it half made)."""
    known = modules()
    sections = sorted(m for m in known if is_config_section(m))
    assert "fedad.detectors.asymst.config" in sections and "fedad.exchanges.config" in sections
    bad = []
    for module in sections:
        parts = module.split(".")
        for i in range(2, len(parts)):
            package = ".".join(parts[:i])
            path = known[package]
            tree = ast.parse(path.read_text(), filename=str(path))
            for imported, _, line in _imports(tree, package, True):
                if imported == "fedad" or imported.startswith("fedad."):
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {imported} "
                               f"(above {module})")
    assert not bad, "packages above a config section import fedad:\n  " + "\n  ".join(bad)


def test_no_import_cycle():
    edges = import_edges()
    found = cycles(edges)
    assert not found, "import cycles:\n  " + "\n  ".join(describe(c, edges) for c in found)


def test_the_checks_catch_an_upward_import_and_a_cycle():
    """The checks on a made-up graph: an import into a higher layer and a cycle."""
    here = (PACKAGE / "errors.py", 1)
    edges = {"fedad.data.io": {"fedad.federation.run": here},
             "fedad.federation.run": {"fedad.federation.site": here},
             "fedad.federation.site": {"fedad.federation.run": here}}
    assert upward_imports(edges) == ["fedad/errors.py:1: fedad.data.io (layer 1) imports "
                                     "fedad.federation.run (layer 5)"]
    assert cycles(edges) == [["fedad.federation.run", "fedad.federation.site",
                              "fedad.federation.run"]]
    # a config section is layer 0: it may not import its own detector
    edges = {"fedad.detectors.toy.config": {"fedad.detectors.toy.detector": here}}
    assert upward_imports(edges) == ["fedad/errors.py:1: fedad.detectors.toy.config (layer 0) "
                                     "imports fedad.detectors.toy.detector (layer 2)"]
