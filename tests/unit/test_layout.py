"""The repository keeps the promises the guide makes about its shape."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from conftest import REPO


def test_source_root_is_not_a_package() -> None:
    # An operator/__init__.py would make `import operator` pick up our folder.
    assert not (REPO / "operator" / "__init__.py").exists()


def test_stdlib_operator_module_is_not_shadowed() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import operator, ringkeeper; print(operator.__file__)"],
        capture_output=True, text=True, check=True, cwd=REPO,
    ).stdout
    assert "ringkeeper" not in out and out.strip().endswith("operator.py")


def test_package_imports_from_operator_folder() -> None:
    spec = importlib.util.find_spec("ringkeeper")
    assert spec is not None and spec.origin is not None
    assert "operator/ringkeeper" in spec.origin.replace("\\", "/")


def test_core_imports_no_io_libraries() -> None:
    """Deciders stay pure: core/ never imports kubernetes, kopf, asyncpg or HTTP clients."""
    banned = ("kopf", "kubernetes", "kubernetes_asyncio", "asyncpg", "aiohttp", "requests",
              "subprocess", "socket")
    for path in (REPO / "operator" / "ringkeeper" / "core").rglob("*.py"):
        for line in path.read_text(encoding="utf-8").splitlines():
            stripped = line.strip()
            if stripped.startswith(("import ", "from ")):
                module = stripped.split()[1].split(".")[0]
                assert module not in banned, f"{path.name} imports {module}: {stripped}"
