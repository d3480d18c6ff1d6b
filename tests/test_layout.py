"""The package layout follows the pipeline: imports flow one way, and no test tooling ships in the package."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "monitor"

# Each stage may import itself and any stage listed before it, never one after it.
ORDER = ["core", "config", "capture", "inference", "render", "alerts", "clips", "mqtt", "fleet", "web", "daemon", "weights", "commands",
         "bench", "cli"]


def _stage(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "monitor" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in ORDER else None


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names
                      if node.module == "monitor"]
    return found


def _own_stage(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    return rel.parts[0] if rel.parts[0] in ORDER else "cli"


def test_no_stage_imports_a_later_stage():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = _own_stage(path)
        if own == "cli" and path.name in ("__init__.py", "__main__.py"):
            continue
        for line, module in _imports(path):
            target = _stage(module)
            if target and ORDER.index(target) > ORDER.index(own):
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({own}) imports {module} ({target})")
    assert not wrong, "\n".join(wrong)


def test_package_ships_no_test_tooling():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for line, module in _imports(path):
            if module.split(".")[0] in ("tests", "testkit", "pytest", "hypothesis"):
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_stages_are_folders():
    flat = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert flat == ["__init__.py", "__main__.py", "cli.py", "daemon.py"], flat


def test_scripts_and_testkit_do_not_import_the_tests():
    """scripts/ and testkit/ share tooling with the tests through testkit/, never by importing test modules."""
    root = PACKAGE.parent
    wrong = [f"{path.relative_to(root)}:{line} imports {module}"
             for folder in ("scripts", "testkit") for path in sorted((root / folder).rglob("*.py"))
             for line, module in _imports(path) if module.split(".")[0] == "tests"]
    assert not wrong, "\n".join(wrong)


def _architecture_tree() -> set[str]:
    """Module paths (relative to monitor/) named in ARCHITECTURE.md's layout block: folders by their
    indentation, files as `name.py` (a line may name several, e.g. `bench/  classify.py ...` is not used)."""
    text = (PACKAGE.parent / "ARCHITECTURE.md").read_text()
    block = text.split("```", 2)[1]
    named: set[str] = set()
    folders: list[tuple[int, str]] = []
    for line in block.splitlines():
        stripped = line.lstrip()
        if not stripped:
            continue
        word = stripped.split()[0]
        indent = len(line) - len(stripped)
        if indent >= 25:                                      # a continued description
            continue
        while folders and folders[-1][0] >= indent:
            folders.pop()
        if word.endswith("/"):
            folders.append((indent, word.rstrip("/")))
        elif word.endswith(".py"):
            prefix = "/".join(name for _, name in folders[1:])      # folders[0] is monitor/ itself
            named.add(f"{prefix}/{word}" if prefix and "/" not in word else word)
    return named


def test_every_module_is_named_in_architecture_md():
    named = _architecture_tree()
    modules = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    missing = sorted(modules - named)
    assert not missing, f"modules missing from ARCHITECTURE.md's layout: {', '.join(missing)}"
    stale = sorted(n for n in named - modules if not n.startswith(("tests/", "testkit/", "scripts/")))
    assert not stale, f"ARCHITECTURE.md names modules that do not exist: {', '.join(stale)}"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def _import_graph(folder: Path) -> dict[str, set[str]]:
    """Module -> the modules of the package it imports, anywhere in the file: deferred imports inside functions and
    `if TYPE_CHECKING:` imports count as much as the ones at the top."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        named: list[str] = []
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                named += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from monitor.web import api` imports the module monitor.web.api
                named += [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                          for alias in node.names]
        edges = {known(name) for name in named if name.split(".")[0] == "monitor"}
        graph[_module_name(path)] = {e for e in edges if e} - {_module_name(path), "monitor"}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle among the modules of `graph` (depth-first search), [] when there is none."""
    state: dict[str, int] = {}          # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_the_package_has_no_import_cycle() -> None:
    """No module of monitor/ imports, even deferred or only for type checking, a module that imports it back: e.g.
    in web/ the server imports the application, which imports the routers, which import what they need (deps,
    params, models, api, the stage's components), never back."""
    cycle = _cycle(_import_graph(PACKAGE))
    assert not cycle, " -> ".join(cycle)


def test_the_cycle_finder_finds_one() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []
