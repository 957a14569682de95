"""The producer side must import without torch: `augment` runs on machines that have no worker extras."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

BLOCK_TORCH = """
import sys
sys.modules['torch'] = None          # any `import torch` now raises ImportError
import importlib, pkgutil, shared
for module in pkgutil.iter_modules(shared.__path__):  # every module of shared/, a new one too
    importlib.import_module(f'shared.{module.name}')
import producer.cli, producer.client, producer.follow
import producer.dashboard.app, producer.dashboard.data  # the dashboard belongs with the producer: torch-free
assert sys.modules['torch'] is None, 'torch was replaced'
assert 'torchvision' not in sys.modules
leaked = sorted(name for name in sys.modules if name.split('.')[0] in ('torch', 'torchvision') and sys.modules[name])
assert not leaked, leaked
print('ok')
"""


def test_producer_imports_without_torch() -> None:
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_producer_does_not_load_torch_when_available() -> None:
    """Even with torch installed, importing the CLI does not pay for loading it."""
    code = (
        "import sys, producer.cli, shared.datasets, shared.storage, shared.specs; "
        "print(sorted(n for n in ('torch', 'torchvision') if n in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def _project_imports() -> dict[str, set[str]]:
    """module -> the project modules it imports, at any depth (a lazy import inside a function counts too)."""
    modules = {
        ".".join(path.relative_to(REPO).with_suffix("").parts): path
        for package in ("producer", "worker", "shared")
        for path in (REPO / package).glob("*.py") if path.name != "__init__.py"
    }
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
        graph[name] = {target for target in imported if target in modules and target != name}
    return graph


def test_the_project_has_no_import_cycle() -> None:
    graph = _project_imports()
    assert len(graph) > 20 and graph["producer.cli"], "the import graph was not built"
    visiting: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> None:
        if module in visiting:
            cycle = visiting[visiting.index(module):] + [module]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        visiting.append(module)
        for target in sorted(graph[module]):
            visit(target)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
