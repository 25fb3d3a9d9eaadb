"""Import direction between the package's layers, and module size, held by a test.

Each sub-package of `ringkeeper` is a layer; a layer may import only the layers listed
for it (docs/architecture.md draws the same table). The three processes (operator =
controller, instance agent = agent, sync sidecar = sync) share models and contracts,
never each other's code. Imports are read from the source (every `import` and
`from ... import`, relative ones resolved, including those inside functions), so a
lazy import cannot slip past.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = REPO / "operator" / "ringkeeper"

_PURE = {"base", "engines", "api", "core"}
ALLOWED: dict[str, set[str]] = {
    # stdlib-only helpers: LSNs, time stamps, SQL quoting, cron grammar, process trees
    "base": set(),
    # engine profiles: binaries, parameter catalogues, SQL names per engine
    "engines": {"base"},
    # the pydantic models (the CRDs are generated from them)
    "api": {"base", "engines"},
    # pure deciders over snapshots (no I/O library: test_layout.py)
    "core": {"base", "engines", "api"},
    # what the operator hands the sidecar and the verifier: ring config, DSNs
    "contracts": _PURE,
    # Kubernetes API access
    "adapters": _PURE | {"contracts"},
    "observability": _PURE,
    # the sync sidecar process
    "sync": _PURE | {"contracts", "adapters", "observability"},
    # verification runs over the ring's transport (connection checks, table matching)
    "verify": _PURE | {"contracts", "adapters", "observability", "sync"},
    # the instance agent process
    "agent": _PURE | {"adapters", "observability"},
    # the operator process: runs verifications, never the sidecar's code
    "controller": _PURE | {"contracts", "adapters", "observability", "verify", "workload"},
    # hospital workloads with a ledger of acknowledged commits (CLI, tests, drills)
    "workload": _PURE | {"contracts"},
    # the command line reaches every process's entry point
    "cli": _PURE | {"contracts", "adapters", "observability", "sync", "verify", "agent",
                    "controller", "workload"},
    # top-level modules
    "__init__": set(),
    "__main__": {"cli"},
}

# Modules over the 400-line limit, with the size they may not grow past. Each entry is
# debt to split (issue 16); the list may only shrink.
OVERSIZE: dict[str, int] = {
}
LIMIT = 400


def _layer(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imported_layers(path: Path) -> set[tuple[str, int]]:
    """(layer, line) of every ringkeeper import in `path`."""
    rel = path.relative_to(PACKAGE)
    package = ["ringkeeper", *rel.parts[:-1]]
    found: set[tuple[str, int]] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = [*base, *(node.module.split(".") if node.module else [])]
                # `from . import names` inside ringkeeper/ imports sub-packages by name
                if len(module) == 1:
                    name = node.names[0].name
                    is_layer = (PACKAGE / name).is_dir() or (PACKAGE / f"{name}.py").exists()
                    module.append(name if is_layer else "__init__")
                targets = [".".join(module)]
            elif node.module:
                targets = [node.module]
        for t in targets:
            parts = t.split(".")
            if parts[0] == "ringkeeper" and len(parts) > 1:
                found.add((parts[1], node.lineno))
    return found


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_layer_is_in_the_table() -> None:
    assert {_layer(p) for p in _modules()} <= set(ALLOWED)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_layers(path: Path) -> None:
    me = _layer(path)
    bad = sorted((layer, line) for layer, line in _imported_layers(path)
                 if layer not in (me, "__init__") and layer not in ALLOWED[me])
    assert not bad, f"{path.relative_to(PACKAGE)} ({me}) imports " + ", ".join(
        f"{layer} (line {line})" for layer, line in bad)


def test_the_table_has_no_cycle() -> None:
    seen: dict[str, int] = {}

    def visit(layer: str, stack: tuple[str, ...]) -> None:
        assert layer not in stack, " -> ".join((*stack, layer))
        if seen.get(layer):
            return
        for dep in ALLOWED[layer]:
            visit(dep, (*stack, layer))
        seen[layer] = 1

    for layer in ALLOWED:
        visit(layer, ())


def test_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The checker itself can fail: a sync module importing the controller is caught,
    relative or absolute, at top level or inside a function."""
    fake = PACKAGE / "sync" / "_layer_probe.py"
    fake_src = ("from ..controller import ring\n"
                "def f():\n    import ringkeeper.agent.agent\n")
    try:
        fake.write_text(fake_src, encoding="utf-8")
        assert {layer for layer, _ in _imported_layers(fake)} == {"controller", "agent"}
    finally:
        fake.unlink()


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_size(path: Path) -> None:
    rel = str(path.relative_to(PACKAGE))
    lines = len(path.read_text(encoding="utf-8").splitlines())
    cap = OVERSIZE.get(rel, LIMIT)
    assert lines <= cap, f"{rel}: {lines} lines (limit {cap}): split it by job"


def test_oversize_list_only_shrinks() -> None:
    """An entry whose module is back under the limit must leave the list."""
    small = [rel for rel in OVERSIZE
             if not (PACKAGE / rel).exists()
             or len((PACKAGE / rel).read_text(encoding="utf-8").splitlines()) <= LIMIT]
    assert not small, f"remove from OVERSIZE: {small}"
