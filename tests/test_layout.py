"""The package layout follows the pipeline: imports flow one way, and no test tooling ships in the package."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "monitor"

# Each stage may import itself and any stage listed before it, never one after it.
ORDER = ["core", "config", "capture", "inference", "alerts", "mqtt", "web", "daemon", "weights", "commands", "bench",
         "cli"]


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
