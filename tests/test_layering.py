"""The package is layered: no import cycle, and no module imports a higher layer.

The offline wing (``training``: corpus, fitting set, fitting, evaluation) sits above the
runtime: it may import any runtime module, no runtime module may import it, and only the
entry points (``cli``, ``__init__``) reach into it.

Every ``import`` of ``src/alknet_firewall`` is read with :mod:`ast` — at module level, inside
functions and under ``TYPE_CHECKING`` alike, since a function-local import is still a
dependency. The layers (lowest first) are the ones drawn in ``docs/concepts.md``; a new module
must be placed in one (a test below fails until it is).
"""

from __future__ import annotations

import ast
from fnmatch import fnmatch
from pathlib import Path

PACKAGE = "alknet_firewall"
SRC = Path(__file__).resolve().parents[1] / "src" / PACKAGE

#: Lowest first. A module may import its own layer and the ones below, never one above.
#: Names are relative to the package; ``*`` matches a package's submodules.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "foundation",
        (
            "constants",
            "errors",
            "logs",
            "normalize",
            "metrics",
            "hardware",
            "language",
            "features",
            "messages",
            "telemetry",
            "request_content",
        ),
    ),
    ("settings", ("config",)),
    ("models and runtime parts", ("model", "model.*", "distributions", "pool", "recorder")),
    ("codebook", ("codebook",)),
    ("scoring", ("scoring",)),
    ("verdicts", ("verdict",)),
    ("firewall", ("firewall", "scan", "status")),
    (
        "integrations and servers",
        ("integrations", "integrations.*", "modelserver", "modelserver.*"),
    ),
    ("offline training", ("training", "training.*")),
    ("entry points", ("cli", "__init__")),
]
#: The offline wing: nothing at runtime imports it, only the entry points.
OFFLINE = "training"
ENTRY_POINTS = ("cli", "__init__")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or "__init__"


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _targets(module: str, is_package: bool, node: ast.AST, known: set[str]) -> list[str]:
    """Internal modules an import statement refers to (relative to the package)."""
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names if a.name.split(".")[0] == PACKAGE]
        return [n.removeprefix(PACKAGE).lstrip(".") or "__init__" for n in names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = [] if module == "__init__" else module.split(".")
        if not is_package:
            base = base[:-1]
        base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
        target = ".".join([*base, *([node.module] if node.module else [])])
    else:
        if not node.module or node.module.split(".")[0] != PACKAGE:
            return []
        target = node.module.removeprefix(PACKAGE).lstrip(".")
    out = []
    for alias in node.names:
        sub = f"{target}.{alias.name}" if target else alias.name
        out.append(sub if sub in known else (target or "__init__"))
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        deps: set[str] = set()
        for node in ast.walk(tree):
            deps.update(_targets(name, is_package, node, known))
        deps.discard(name)
        unknown = deps - known
        assert not unknown, f"{name} imports modules that do not exist: {sorted(unknown)}"
        graph[name] = deps
    return graph


def _layer(module: str) -> int:
    for i, (_, patterns) in enumerate(LAYERS):
        if any(fnmatch(module, pat) for pat in patterns):
            return i
    raise KeyError(module)


def test_every_module_has_a_layer() -> None:
    missing = []
    for module in _modules():
        try:
            _layer(module)
        except KeyError:
            missing.append(module)
    assert not missing, f"place these modules in tests/test_layering.py LAYERS: {missing}"


def test_no_module_imports_a_higher_layer() -> None:
    upward = []
    for module, deps in _graph().items():
        for dep in deps:
            if _layer(dep) > _layer(module):
                upward.append(
                    f"{module} ({LAYERS[_layer(module)][0]}) imports {dep} "
                    f"({LAYERS[_layer(dep)][0]})"
                )
    assert not upward, "imports of a higher layer:\n" + "\n".join(sorted(upward))


def test_no_import_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep) :], dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _is_offline(module: str) -> bool:
    return module == OFFLINE or module.startswith(f"{OFFLINE}.")


def _runtime_imports_of_training(graph: dict[str, set[str]]) -> list[str]:
    """Imports of the offline wing by a module outside it that is not an entry point."""
    return sorted(
        f"{module} imports {dep}"
        for module, deps in graph.items()
        if not _is_offline(module) and module not in ENTRY_POINTS
        for dep in deps
        if _is_offline(dep)
    )


def test_nothing_at_runtime_imports_the_offline_wing() -> None:
    assert not _runtime_imports_of_training(_graph())


def test_the_offline_wing_is_enforced() -> None:
    """A runtime module importing training fails both checks; training importing the runtime,
    and the entry points importing training, do not."""
    graph = {
        "firewall": {"training.fitting", "scoring"},
        "training.fitting": {"scoring", "codebook"},
        "cli": {"training.corpus", "firewall"},
    }
    assert _runtime_imports_of_training(graph) == ["firewall imports training.fitting"]
    assert _layer("training.fitting") > _layer("firewall") > _layer("scoring")
    assert _layer("training") > _layer("integrations.gateway")
    assert _layer("cli") > _layer("training.corpus")


def test_the_checker_sees_function_local_and_relative_imports() -> None:
    """The reader itself: a function-local relative import is an edge (so the test can fail)."""
    tree = ast.parse("def f():\n    from ..firewall import Firewall\n    from . import wire\n")
    known = {"firewall", "model", "model.wire", "model.remote"}
    found = set()
    for node in ast.walk(tree):
        found.update(_targets("model.remote", False, node, known))
    assert found == {"firewall", "model.wire"}


#: A module longer than this says at the top of its docstring why (``Size (...)``).
MAX_LINES = 460


def test_every_module_declares_its_public_names() -> None:
    missing = []
    for name, path in _modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        declared = any(
            isinstance(n, (ast.Assign, ast.AnnAssign))
            and any(
                isinstance(t, ast.Name) and t.id == "__all__"
                for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
            )
            for n in tree.body
        )
        if not declared:
            missing.append(name)
    assert not missing, f"modules without __all__: {missing}"


def test_large_modules_say_why() -> None:
    unexplained = []
    for name, path in _modules().items():
        text = path.read_text(encoding="utf-8")
        doc = ast.get_docstring(ast.parse(text)) or ""
        if len(text.splitlines()) > MAX_LINES and "Size (" not in doc:
            unexplained.append(f"{name} ({len(text.splitlines())} lines)")
    assert not unexplained, (
        f"modules over {MAX_LINES} lines need a 'Size (...)' reason in their docstring: "
        f"{unexplained}"
    )
