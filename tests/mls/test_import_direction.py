"""Layering: the native engine knows only its storage, and the package has no import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import mls

ROOT = Path(mls.__file__).resolve().parent
#: What the native engine must never import: everything above its storage.
FORBIDDEN_FOR_NATIVE = ("keystore", "mls.drainer", "mls.receipts", "mls.client", "mls.mlsrs")


def module_name(path: Path, base: Path) -> str:
    """``<base>/mls/native/engine.py`` → ``mls.native.engine``; a package is its ``__init__``."""
    parts = path.relative_to(base).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, *, top_level_only: bool, base: Path = ROOT.parent) -> set[str]:
    """Modules imported by a file (relative imports resolved); type-checking blocks skipped."""
    tree = ast.parse(path.read_text(), str(path))
    name = module_name(path, base)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                module = ".".join([*anchor, module] if module else anchor)
            out.add(module)
            for alias in node.names:  # ``from mls import categories`` imports a module
                candidate = f"{module}.{alias.name}"
                if (ROOT.parent / candidate.replace(".", "/")).with_suffix(".py").exists():
                    out.add(candidate)
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of ``graph`` as a path of nodes, or ``[]``."""
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> list[str]:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*trail, node, nxt]
            if nxt in graph and nxt not in state and (found := visit(nxt, [*trail, node])):
                return found
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node, [])):
            return found
    return []


def test_native_engine_imports_nothing_above_its_storage() -> None:
    """No file of mls/native imports the vault, drainer, receipts, client or mls-rs adapter."""
    offenders = []
    for path in sorted((ROOT / "native").rglob("*.py")):
        for name in imports(path, top_level_only=False):  # lazy imports count too
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN_FOR_NATIVE):
                offenders.append(f"{module_name(path, ROOT.parent)} imports {name}")
    assert offenders == []


def test_the_scanner_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    """The scanner finds an import inside a function and a relative one (its silence counts)."""
    probe = tmp_path / "mls" / "native" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text("def f():\n    from ..client import MlsClient\n    import keystore\n")
    assert {"mls.client", "keystore"} <= imports(probe, top_level_only=False, base=tmp_path)


def test_the_cycle_finder_finds_a_cycle() -> None:
    """A two-module cycle is reported (so an empty answer below means something)."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_modules() -> None:
    """Module-level imports inside mls form no cycle (re-exporting __init__ files aside)."""
    graph = {
        module_name(path, ROOT.parent): {
            n for n in imports(path, top_level_only=True) if n.startswith("mls.")
        }
        for path in ROOT.rglob("*.py")
        if path.name != "__init__.py"
    }
    assert find_cycle(graph) == []
