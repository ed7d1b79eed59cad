"""The layout's rules, checked: arrows point down (api -> router -> store, ring, peer), the
domain code knows no HTTP, the client needs no server, and no module imports form a cycle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("cacheapi", "nodes", "cache_project", "ratelimit")


def _loaded_after_import(module: str) -> set[str]:
    """Every module a fresh interpreter has loaded once ``module`` is imported."""
    code = f"import sys, {module}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "cache_project.settings"},
    )
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def _under(loaded: set[str], *prefixes: str) -> list[str]:
    return sorted(m for m in loaded if any(m == p or m.startswith(p + ".") for p in prefixes))


@pytest.mark.parametrize(
    "module",
    [
        "cacheapi.store",
        "cacheapi.store.counters",
        "nodes.ring",
        "cacheapi.peer.frames",
        "ratelimit.algorithms",
    ],
)
def test_domain_modules_import_no_django(module):
    assert _under(_loaded_after_import(module), "django", "rest_framework", "gevent") == []


def test_the_router_knows_no_http_framework():
    loaded = _loaded_after_import("cacheapi.router")
    assert _under(loaded, "django.http", "rest_framework", "cacheapi.api", "gunicorn") == []


def test_the_node_imports_no_server():
    loaded = _loaded_after_import("cacheapi.node")
    assert _under(loaded, "gevent", "gunicorn", "rest_framework", "cacheapi.api") == []


def test_the_client_imports_no_views_models_or_server():
    loaded = _loaded_after_import("cacheapi.client")
    forbidden = ("cacheapi.api", "cacheapi.models", "nodes.models", "django.db", "gunicorn")
    assert _under(loaded, *forbidden) == []


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, known: set[str]) -> set[str]:
    """Project modules imported anywhere in the file (inside functions too: a lazy import
    hides a cycle, it does not remove it), except under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            node.body = []
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found.update(n for n in names if n in known)
    return found


def test_no_import_cycles():
    files = [
        p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if "migrations" not in p.parts
    ]
    modules = {_module_name(p): p for p in files}
    known = set(modules)
    graph = {name: _imports(path, known) - {name} for name, path in modules.items()}
    # A package's __init__ importing its own submodules is not a cycle of concern.
    for name in graph:
        graph[name] = {m for m in graph[name] if not m.startswith(name + ".")}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(name: str, stack: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep) :], dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_arrows_point_down():
    """store imports nothing of ours outside store; peer imports no api and no router; the
    router imports no api."""
    files = [p for p in (ROOT / "cacheapi").rglob("*.py") if "migrations" not in p.parts]
    modules = {_module_name(p): p for p in files}
    known = set(modules) | {"cacheapi"}
    wrong = []
    for name, path in modules.items():
        deps = _imports(path, known | {"nodes.ring", "nodes.models"})
        if name.startswith("cacheapi.store"):
            wrong += [(name, d) for d in deps if not d.startswith("cacheapi.store")]
        if name.startswith("cacheapi.peer"):
            wrong += [(name, d) for d in deps if d.startswith(("cacheapi.api", "cacheapi.router"))]
        if name == "cacheapi.router":
            wrong += [(name, d) for d in deps if d.startswith("cacheapi.api")]
    assert wrong == []
