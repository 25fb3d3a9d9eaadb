"""`ringkeeper validate` and the API server agree on every hostile manifest.

Each file of tests/hostile/ goes to the local cluster's API server with
`kubectl apply --dry-run=server` (strict field validation, kubectl's default) and
through `ringkeeper validate`: both refuse it with the message on its first line,
or (`# expect: ok`) both accept it.
"""

from __future__ import annotations

import contextlib
import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import REPO, expected_error
from e2e.conftest import Cluster
from ringkeeper.cli import validate as validate_cli

HOSTILE = REPO / "tests" / "hostile"
FILES = sorted(HOSTILE.glob("*.yaml"))


@pytest.fixture(scope="module")
def hostile_ns(cluster: Cluster) -> Iterator[str]:
    name = f"hostile-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _validate(path: Path) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = validate_cli.run([str(path)])
    return code, out.getvalue() + err.getvalue()


def test_corpus_present() -> None:
    assert len(FILES) >= 50


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_api_server_and_validate_agree(cluster: Cluster, hostile_ns: str, path: Path) -> None:
    expect = expected_error(path)
    server = cluster.kubectl("apply", "-n", hostile_ns, "--dry-run=server", "-f", str(path),
                             check=False)
    said = (server.stdout + server.stderr)[:4000]
    code, ours = _validate(path)
    if expect == "ok":
        assert server.returncode == 0 and "(server dry run)" in server.stdout, said
        assert code == 0, ours[:4000]
    else:
        assert server.returncode != 0, f"the API server accepted {path.name}: {said}"
        assert expect in said, f"API server: {said}"
        assert code == 1, f"ringkeeper validate accepted {path.name}"
        assert expect in ours, f"ringkeeper validate: {ours[:4000]}"
