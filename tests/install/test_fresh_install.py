"""A new machine has only what pyproject.toml declares: install the package, not editable,
into a fresh virtual environment that sees no site-packages of this machine, and import
every module of it. A module that imports an undeclared package fails here."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow

SOURCE = REPO / "operator" / "ringkeeper"


def _declared() -> set[str]:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(meta["dependencies"])
    names = set()
    for r in reqs:
        name = r.split(";")[0]
        for sep in "<>=!~[ ":
            name = name.split(sep)[0]
        names.add(name.strip().lower().replace("_", "-"))
    return names


def _third_party_imports() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for f in SOURCE.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            else:
                continue
            for m in mods:
                top = m.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("ringkeeper", "__future__"):
                    found.setdefault(top, set()).add(str(f.relative_to(REPO)))
    return found


def test_every_import_is_a_runtime_dependency() -> None:
    """Fast, static half: each top-level import resolves (through the installed
    distributions' metadata) to a package in [project].dependencies, not an extra."""
    from importlib.metadata import packages_distributions

    dists = packages_distributions()
    declared = _declared()
    missing = {}
    for top, files in _third_party_imports().items():
        owners = {d.lower().replace("_", "-") for d in dists.get(top, [])}
        # pydantic_core is pydantic's own compiled half, pinned by pydantic.
        if top == "pydantic_core":
            owners.add("pydantic")
        if not owners & declared:
            missing[top] = sorted(files)
    assert not missing, f"imported but not declared in [project].dependencies: {missing}"


def test_fresh_venv_install_imports_every_module(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    # The wheel is built as pip builds it for a user (isolated build env), then the host's
    # pip installs it and its declared dependencies into the venv (ensurepip would add half
    # a minute). Not editable: the wheel's file list is what is tested too.
    wheels = tmp_path / "wheels"
    # Build from a copy of what the wheel is made of, so setuptools' build/ folder does
    # not land in the checkout.
    src = tmp_path / "src"
    shutil.copytree(REPO / "operator", src / "operator",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
         "--disable-pip-version-check", "-w", str(wheels), str(src)],
        capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    (wheel,) = wheels.glob("ringkeeper-*.whl")
    res = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "-q",
         "--disable-pip-version-check", str(wheel)],
        capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    script = textwrap.dedent("""
        import importlib, pkgutil, sys
        import ringkeeper
        assert "site-packages" in ringkeeper.__file__, ringkeeper.__file__
        from pathlib import Path
        root = Path(ringkeeper.__file__).parent
        for data in DATA_FILES:
            assert (root / data).is_file(), f"{data} is not in the installed package"
        failed = {}
        names = [m.name for m in pkgutil.walk_packages(ringkeeper.__path__, "ringkeeper.")
                 if not m.name.endswith("__main__")]
        for name in names:
            try:
                importlib.import_module(name)
            except Exception as exc:
                failed[name] = f"{type(exc).__name__}: {exc}"
        print(len(names), "modules")
        if failed:
            sys.exit(repr(failed))
    """)
    data = sorted(str(p.relative_to(SOURCE)) for p in SOURCE.rglob("*")
                  if p.is_file() and p.suffix not in (".py", ".pyc"))
    script = f"DATA_FILES = {data!r}\n" + script
    res = subprocess.run([str(py), "-I", "-c", script], capture_output=True, text=True,
                         cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    count = int(res.stdout.split()[0])
    assert count > 50, res.stdout
