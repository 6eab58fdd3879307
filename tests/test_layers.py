"""The package's layers: no import cycles and no import of a higher layer.

Every ``import`` statement counts, at module level or inside a function: a function-level
import still ties two modules together, it only hides the tie until the call. The table
below is the architecture the README's "Layout" section describes; a new module must be
placed in it (the test names any module it cannot place)."""

from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Bottom to top. A module may import modules of its own layer or of lower ones.
LAYERS = (
    ("common", ("rslad_tf.common",)),
    ("backends", ("rslad_tf.backends",)),
    ("data, models and losses", ("rslad_tf.data", "rslad_tf.models", "rslad_tf.losses")),
    ("transforms and attacks", ("rslad_tf.transforms", "rslad_tf.attacks")),
    ("methods", ("rslad_tf.methods",)),
    ("configuration and interop", ("rslad_tf.config", "rslad_tf.interop")),
    ("evaluation", ("rslad_tf.evaluation",)),
    ("training", ("rslad_tf.training",)),
    ("benchmark and command lines", (
        "rslad_tf.bench", "rslad_tf.train", "rslad_tf.evaluate", "rslad_tf.report",
        "rslad_tf.export", "rslad_tf.convert_teacher", "rslad_tf.verify_autoattack")),
    ("orchestration", ("components", "pipelines")),
)
# rslad_tf/__init__.py only re-exports the method classes lazily (PEP 562 __getattr__).
PACKAGE_ROOT = "rslad_tf"


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
    return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def _modules() -> dict[str, str]:
    found = {}
    for top in ("rslad_tf", "components", "pipelines"):
        for dirpath, dirs, files in os.walk(os.path.join(ROOT, top)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(dirpath, name)
                    found[_module_name(path)] = path
    return found


def _imports(path: str, module: str, known) -> set[str]:
    """The package modules ``module`` imports, anywhere in its file."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    is_package = path.endswith("__init__.py")
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = module.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # `from pkg import name`: name may be a submodule or an attribute of pkg.
            names = [f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in known else prefix
                     for alias in node.names]
        else:
            continue
        for name in names:
            # The deepest known module the name refers to.
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
    return targets


def _layer(module: str) -> int | None:
    best, depth = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > depth:
                best, depth = index, len(prefix)
    return best


@pytest.fixture(scope="module")
def graph():
    modules = _modules()
    return {m: _imports(p, m, modules) for m, p in modules.items()}


def test_every_module_has_a_layer(graph):
    unplaced = sorted(m for m in graph if m != PACKAGE_ROOT and _layer(m) is None)
    assert not unplaced, f"modules missing from LAYERS: {unplaced}"


def test_no_module_imports_a_higher_layer(graph):
    upward = []
    for module, targets in graph.items():
        if module == PACKAGE_ROOT:
            continue
        for target in targets:
            if target == PACKAGE_ROOT:
                continue
            if _layer(target) > _layer(module):
                upward.append(f"{module} ({LAYERS[_layer(module)][0]}) imports {target} "
                              f"({LAYERS[_layer(target)][0]})")
    assert not upward, "\n".join(sorted(upward))


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in graph:
                continue
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def _graph_without_packages_reexports(graph):
    # A package's __init__ that imports its own submodules and a submodule that imports a
    # sibling through the package (`from rslad_tf.methods.base import ...` loads
    # rslad_tf.methods first) is how Python packages work, not a design cycle: drop edges
    # from a module to its own ancestors.
    return {m: {t for t in targets if not m.startswith(t + ".")} for m, targets in graph.items()}


def test_no_import_cycles(graph):
    cycles = _cycles(_graph_without_packages_reexports(graph))
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_checks_catch_a_cycle_and_an_upward_import():
    # Calibration: the two checks flag what they are meant to flag.
    fake = {"rslad_tf.models.x": {"rslad_tf.training.loop"}, "rslad_tf.training.loop":
            {"rslad_tf.models.x"}}
    assert _cycles(fake) == [["rslad_tf.models.x", "rslad_tf.training.loop"]]
    assert _layer("rslad_tf.training.loop") > _layer("rslad_tf.models.x")
