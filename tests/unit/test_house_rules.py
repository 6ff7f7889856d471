"""Rules of the code base that a reviewer would otherwise have to remember, checked on the AST.

- No module of `service/` speaks a wire protocol itself: HTTP, Redis and AMQP go through their
  maintained clients (httpx on aiohttp, redis-py, aio-pika), so proxies, TLS options, Sentinel
  and their fixes come with them.
- No import cycles between modules of `service/`.
- No private name (`_x`) imported from another module.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "service"
# Wire parsers that only a home-made HTTP or Redis client would need.
PROTOCOL_MODULES = {"hiredis", "httptools", "h11", "h2", "httpcore"}
PROTOCOL_BASES = {"Protocol", "BufferedProtocol", "DatagramProtocol"}


def _modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(relative.parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join(parts), ast.parse(path.read_text(), str(path))


def _imports(name: str, tree: ast.Module) -> Iterator[tuple[str, list[str]]]:
    """(imported module, names) for every import in the module, relative ones resolved."""
    package = name if (PACKAGE.parent / name.replace(".", "/")).is_dir() else name.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base, [alias.name for alias in node.names]


MODULES = dict(_modules())


def test_no_module_speaks_a_wire_protocol_itself() -> None:
    offenders = []
    for name, tree in MODULES.items():
        for imported, _ in _imports(name, tree):
            if imported.split(".")[0] in PROTOCOL_MODULES:
                offenders.append(f"{name} imports {imported}")
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                for base in node.bases:
                    base_name = base.attr if isinstance(base, ast.Attribute) else ""
                    if isinstance(base, ast.Attribute) and base_name in PROTOCOL_BASES:
                        offenders.append(f"{name}.{node.name} subclasses asyncio.{base_name}")
    assert offenders == []


def test_no_private_name_is_imported_from_another_module() -> None:
    offenders = [
        f"{name}: from {imported} import {imported_name}"
        for name, tree in MODULES.items()
        for imported, names in _imports(name, tree)
        for imported_name in names
        if imported_name.startswith("_") and not imported_name.startswith("__")
    ]
    assert offenders == []


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for name, tree in MODULES.items():
        for imported, names in _imports(name, tree):
            # `from package import module` depends on the module, not on the package.
            submodules = {f"{imported}.{n}" for n in names} & MODULES.keys()
            others = len(submodules) < len(names) or not names
            targets = submodules | ({imported} if others else set())
            graph[name] |= {t for t in targets if t in MODULES and t != name}
    return graph


def test_no_import_cycle_between_modules() -> None:
    graph = _graph()
    cycles: list[list[str]] = []
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == [], " ; ".join(" -> ".join(cycle) for cycle in cycles)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_says_what_it_holds(name: str) -> None:
    assert ast.get_docstring(MODULES[name]), f"{name} has no module docstring"
