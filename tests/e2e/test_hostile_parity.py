"""`ringkeeper validate` and the API server agree on every hostile manifest.

Each file of tests/hostile/ goes to the local cluster's API server with
`kubectl apply --dry-run=server` (strict field validation, kubectl's default) and
through `ringkeeper validate`: both refuse it with the message on its first line,
or (`# expect: ok`) both accept it.

Files marked `# send: raw` hold what kubectl itself hides from the server: its
YAML-to-JSON step keeps the last of two equal keys, so the server never sees the
duplicate. Their YAML goes to the API server unchanged as well (POST with
application/yaml, dryRun=All, fieldValidation=Strict), which must refuse it as
`ringkeeper validate` does; and kubectl is shown to accept it, so the day it
starts refusing duplicates too, this test says so.
"""

from __future__ import annotations

import contextlib
import io
import json
import ssl
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO, expected_error
from e2e.conftest import Cluster
from ringkeeper.api.v1alpha1 import BY_KIND
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


def _raw(path: Path) -> bool:
    return "# send: raw" in path.read_text(encoding="utf-8").splitlines()[:3]


def _post_raw(cluster: Cluster, ns: str, path: Path) -> tuple[int, str]:
    """POST the file's bytes to the API server as application/yaml (a server-side dry run
    with strict field validation); (HTTP status, body)."""
    config: dict[str, Any] = yaml.safe_load(cluster.kubeconfig.read_text())
    server = config["clusters"][0]["cluster"]
    user = config["users"][0]["user"]
    ctx = ssl.create_default_context(cafile=server["certificate-authority"])
    ctx.load_cert_chain(user["client-certificate"], user["client-key"])
    kind = next(line.split(":", 1)[1].strip() for line in path.read_text().splitlines()
                if line.startswith("kind:"))
    url = (f"{server['server']}/apis/ringkeeper.io/v1alpha1/namespaces/{ns}/"
           f"{BY_KIND[kind].info.plural}?dryRun=All&fieldValidation=Strict")
    request = urllib.request.Request(url, data=path.read_bytes(), method="POST", headers={
        "Content-Type": "application/yaml", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, context=ctx, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        body = exc.read().decode()
        with contextlib.suppress(ValueError):
            body = json.loads(body).get("message", body)
        return exc.code, body


def test_corpus_present() -> None:
    assert len(FILES) >= 50


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_api_server_and_validate_agree(cluster: Cluster, hostile_ns: str, path: Path) -> None:
    expect = expected_error(path)
    server = cluster.kubectl("apply", "-n", hostile_ns, "--dry-run=server", "-f", str(path),
                             check=False)
    said = (server.stdout + server.stderr)[:4000]
    code, ours = _validate(path)
    if _raw(path):
        assert server.returncode == 0, f"kubectl now refuses {path.name} itself: {said}"
        status, said = _post_raw(cluster, hostile_ns, path)
        assert status >= 400, f"the API server accepted {path.name}: {said}"
        assert expect in said, f"API server: {said}"
        assert code == 1 and expect in ours, f"ringkeeper validate: {ours[:4000]}"
        return
    if expect == "ok":
        assert server.returncode == 0 and "(server dry run)" in server.stdout, said
        assert code == 0, ours[:4000]
    else:
        assert server.returncode != 0, f"the API server accepted {path.name}: {said}"
        assert expect in said, f"API server: {said}"
        assert code == 1, f"ringkeeper validate accepted {path.name}"
        assert expect in ours, f"ringkeeper validate: {ours[:4000]}"
