"""The integration's import graph: no module imports itself back, proto stays HA-free.

Every module of custom_components/sonoff_ota is parsed with `ast` (nothing is imported);
every `import`/`from ... import` counts, including function-local ones and those under
`TYPE_CHECKING`, because a local import that dodges a cycle at run time is still a cycle in
the design. Nothing is mocked.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

PACKAGE = "custom_components.sonoff_ota"
ROOT = Path(__file__).resolve().parent.parent / "custom_components" / "sonoff_ota"


def module_name(path: Path, root: Path, package: str) -> str:
    """`<root>/proto/x.py` -> `<package>.proto.x`; a package's `__init__.py` is the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def _imported(node: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """The absolute names `node` imports (for `from m import a`, both `m` and `m.a`)."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    if not isinstance(node, ast.ImportFrom):
        return
    if node.level:
        base = module.split(".")
        if not is_package:
            base.pop()
        if node.level > 1:
            base = base[: len(base) - (node.level - 1)]
        target = ".".join([*base, node.module] if node.module else base)
    else:
        target = node.module or ""
    yield target
    yield from (f"{target}.{alias.name}" for alias in node.names)  # `from . import sub`


def import_graph(root: Path, package: str) -> dict[str, dict[str, set[str]]]:
    """Per module: `internal` (modules of `package` it imports) and `external` (the rest)."""
    sources = {module_name(p, root, package): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, dict[str, set[str]]] = {}
    for name, path in sources.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        internal: set[str] = set()
        external: set[str] = set()
        for node in ast.walk(tree):  # walks into functions and `if TYPE_CHECKING:` too
            for target in _imported(node, name, path.name == "__init__.py"):
                if target in sources:
                    if target != name:
                        internal.add(target)
                elif target != package and not target.startswith(f"{package}."):
                    external.add(target)
        graph[name] = {"internal": internal, "external": external}
    return graph


def find_cycles(edges: Mapping[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path that returns to its start) per strongly connected component."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan; the graph is small, recursion is fine
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return [_cycle_in(sorted(c), edges) for c in components]


def _cycle_in(component: list[str], edges: Mapping[str, set[str]]) -> list[str]:
    """A concrete cycle inside a strongly connected `component`, starting at its first node."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    queue = [start]
    while queue:  # breadth-first back to `start`: the shortest cycle through it
        node = queue.pop(0)
        for nxt in sorted(edges.get(node, ())):
            if nxt == start:
                return [*paths[node], start]
            if nxt in members and nxt not in paths:
                paths[nxt] = [*paths[node], nxt]
                queue.append(nxt)
    raise AssertionError(f"{component} is not strongly connected")


def _internal(graph: Mapping[str, Mapping[str, set[str]]]) -> dict[str, set[str]]:
    return {name: set(info["internal"]) for name, info in graph.items()}


def test_no_import_cycles() -> None:
    graph = import_graph(ROOT, PACKAGE)
    assert f"{PACKAGE}.proto.flash_stages" in graph  # the walk found the package
    cycles = find_cycles(_internal(graph))
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_proto_imports_no_home_assistant() -> None:
    graph = import_graph(ROOT, PACKAGE)
    proto = f"{PACKAGE}.proto"
    offenders = {}
    for name, info in graph.items():
        if name != proto and not name.startswith(f"{proto}."):
            continue
        bad = {
            t for t in info["external"] if t == "homeassistant" or t.startswith("homeassistant.")
        }
        # The HA layer imports homeassistant, so importing it from proto does too.
        bad |= {t for t in info["internal"] if t != proto and not t.startswith(f"{proto}.")}
        if bad:
            offenders[name] = sorted(bad)
    assert not offenders, f"proto modules importing Home Assistant: {offenders}"


def _write(root: Path, files: Mapping[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_graph_sees_local_type_checking_and_relative_imports(tmp_path: Path) -> None:
    """The checker itself: a cycle hidden in a function or behind TYPE_CHECKING is found."""
    _write(
        tmp_path,
        {
            "__init__.py": "",
            "proto/__init__.py": "",
            "proto/a.py": "def pick():\n    from .b import B\n    return B\n",
            "proto/b.py": "from .c import C\nB = C\n",
            "proto/c.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\nC = 1\n"
            ),
            "proto/d.py": "import homeassistant.core\nfrom ..layer import X\n",
            "layer.py": "from .proto.c import C\nX = C\n",
        },
    )
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.proto.a"]["internal"] == {"pkg.proto.b"}
    assert graph["pkg.proto.c"]["internal"] == {"pkg.proto", "pkg.proto.a"}
    assert graph["pkg.proto.d"]["internal"] == {"pkg.layer"}
    assert "homeassistant.core" in graph["pkg.proto.d"]["external"]
    assert find_cycles(_internal(graph)) == [
        ["pkg.proto.a", "pkg.proto.b", "pkg.proto.c", "pkg.proto.a"]
    ]


def test_acyclic_graph_has_no_cycles() -> None:
    edges = {"a": {"b", "c"}, "b": {"c"}, "c": set()}
    assert find_cycles(edges) == []
    assert find_cycles({**edges, "c": {"a"}}) == [["a", "c", "a"]]  # the shortest one
