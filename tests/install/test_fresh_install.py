"""A new machine has only what pyproject.toml declares: install the package, not editable,
into a fresh virtual environment that sees no site-packages of this machine, and import
every module of it. A module that imports an undeclared package fails here.

Two distributions: the operator (`ringkeeper`, pyproject.toml) and the local cluster
(`ringkeeper-devcluster`, tools/devcluster), a development tool the product never
imports."""

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
DEV_ROOT = REPO / "tools" / "devcluster"
DEV_SOURCE = DEV_ROOT / "ringkeeper_devcluster"
# (import package, its source, its pyproject)
DISTRIBUTIONS = [("ringkeeper", SOURCE, REPO / "pyproject.toml"),
                 ("ringkeeper_devcluster", DEV_SOURCE, DEV_ROOT / "pyproject.toml")]


def _declared(pyproject: Path = REPO / "pyproject.toml") -> set[str]:
    meta = tomllib.loads(pyproject.read_text())["project"]
    reqs = list(meta["dependencies"])
    names = set()
    for r in reqs:
        name = r.split(";")[0]
        for sep in "<>=!~[ ":
            name = name.split(sep)[0]
        names.add(name.strip().lower().replace("_", "-"))
    return names


def _third_party_imports(source: Path = SOURCE) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for f in source.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            else:
                continue
            for m in mods:
                top = m.split(".")[0]
                if top not in sys.stdlib_module_names and top not in (
                        "ringkeeper", "ringkeeper_devcluster", "__future__"):
                    found.setdefault(top, set()).add(str(f.relative_to(REPO)))
    return found


@pytest.mark.parametrize(("package", "source", "pyproject"), DISTRIBUTIONS,
                         ids=[d[0] for d in DISTRIBUTIONS])
def test_every_import_is_a_runtime_dependency(package: str, source: Path,
                                              pyproject: Path) -> None:
    """Fast, static half: each top-level import resolves (through the installed
    distributions' metadata) to a package in [project].dependencies, not an extra."""
    from importlib.metadata import packages_distributions

    dists = packages_distributions()
    declared = _declared(pyproject)
    missing = {}
    for top, files in _third_party_imports(source).items():
        owners = {d.lower().replace("_", "-") for d in dists.get(top, [])}
        # pydantic_core is pydantic's own compiled half, pinned by pydantic.
        if top == "pydantic_core":
            owners.add("pydantic")
        if not owners & declared:
            missing[top] = sorted(files)
    assert not missing, f"imported but not declared in [project].dependencies: {missing}"


def test_the_product_never_imports_the_dev_cluster() -> None:
    hits = sorted(str(f.relative_to(REPO)) for f in SOURCE.rglob("*.py")
                  if "ringkeeper_devcluster" in f.read_text(encoding="utf-8"))
    assert not hits, f"the operator package refers to the dev cluster: {hits}"


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
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    shutil.copytree(REPO / "operator", src / "operator", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(DEV_ROOT, src / "devcluster", ignore=ignore)
    for tree in (src, src / "devcluster"):
        res = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
             "--disable-pip-version-check", "-w", str(wheels), str(tree)],
            capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr
    (wheel,) = wheels.glob("ringkeeper-0*.whl")
    (dev_wheel,) = wheels.glob("ringkeeper_devcluster-*.whl")
    import zipfile
    product_files = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in product_files if "devcluster" in n], product_files
    res = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "-q",
         "--disable-pip-version-check", "--find-links", str(wheels), str(wheel),
         str(dev_wheel)],
        capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    script = textwrap.dedent("""
        import importlib, pkgutil, sys
        pkg = importlib.import_module(PACKAGE)
        assert "site-packages" in pkg.__file__, pkg.__file__
        from pathlib import Path
        root = Path(pkg.__file__).parent
        for data in DATA_FILES:
            assert (root / data).is_file(), f"{data} is not in the installed package"
        failed = {}
        names = [m.name for m in pkgutil.walk_packages(pkg.__path__, PACKAGE + ".")
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
    counts = {}
    for package, source, _ in DISTRIBUTIONS:
        data = sorted(str(p.relative_to(source)) for p in source.rglob("*")
                      if p.is_file() and p.suffix not in (".py", ".pyc"))
        res = subprocess.run(
            [str(py), "-I", "-c", f"PACKAGE = {package!r}\nDATA_FILES = {data!r}\n" + script],
            capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr
        counts[package] = int(res.stdout.split()[0])
    assert counts["ringkeeper"] > 50 and counts["ringkeeper_devcluster"] > 10, counts
