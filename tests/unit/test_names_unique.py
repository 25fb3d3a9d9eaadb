"""One name, one meaning: no two modules of the package define the same public class,
enum or type alias.

Issue 16 found `Decision`, `Kind`, `Action`, `Link` and `LinkStatus` each defined twice
with different meanings, so a reader (or an import completed by an editor) could take
one for the other. Public top-level classes and CamelCase aliases are read from the
source; SHARED lists the names still defined twice, each a debt that may only shrink.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "operator" / "ringkeeper"

# Names still defined in two modules; the list may only shrink.
SHARED: dict[str, set[str]] = {}


def _public_names(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ClassDef):
            out.add(node.name)
        elif isinstance(node, ast.Assign):
            out.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out.add(node.target.id)
    # CamelCase only: classes, enums, aliases (not CONSTANTS or functions)
    return {n for n in out if n[:1].isupper() and not n.isupper() and not n.startswith("_")}


def definitions(root: Path = PACKAGE) -> dict[str, set[str]]:
    where: dict[str, set[str]] = defaultdict(set)
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        for name in _public_names(path):
            where[name].add(str(path.relative_to(root)))
    return {n: w for n, w in where.items() if len(w) > 1}


def test_no_name_means_two_things() -> None:
    dup = definitions()
    new = {n: sorted(w) for n, w in dup.items() if n not in SHARED}
    assert not new, f"defined in more than one module (rename one): {new}"


def test_shared_list_only_shrinks() -> None:
    dup = definitions()
    gone = sorted(n for n in SHARED if n not in dup)
    assert not gone, f"no longer defined twice: remove from SHARED: {gone}"


def test_checker_sees_a_second_definition(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("class Decision:\n    pass\n")
    (tmp_path / "b.py").write_text("from enum import StrEnum\n\nclass Decision(StrEnum):\n"
                                   "    X = 'x'\nMAX = 3\n")
    assert definitions(tmp_path) == {"Decision": {"a.py", "b.py"}}
