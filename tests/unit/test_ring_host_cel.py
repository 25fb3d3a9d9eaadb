"""external.host at admission, run by the API server's own code (hack/celcheck): the
ReplicationRing CRD passes the CEL cost limits with the host pattern, and admission
refuses exactly the hosts `is_host` refuses (table tests/unit/test_conninfo.py), with the
same sentence. Skips, saying why, without Go or its module cache."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from test_conninfo import BAD_HOSTS, GOOD_HOSTS

import celtool
from ringkeeper.api import crdgen
from ringkeeper.api.v1alpha1 import BY_KIND
from ringkeeper.api.v1alpha1.ring import HOST_MESSAGE, is_host


@pytest.fixture(scope="module")
def celcheck(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("celcheck")
    binary = celtool.binary(out)
    crd = out / "ring.yaml"
    crd.write_text(crdgen.render(BY_KIND["ReplicationRing"]), encoding="utf-8")
    return binary, crd


def ring(host: str, **external: Any) -> dict[str, Any]:
    members = [{"name": f"m{i}", "external": {
        "host": host, "database": "lis", "engine": "postgresql", "version": "17",
        "passwordSecret": {"name": "lab-sync"}, "tls": {"caSecret": {"name": "lab-ca"}},
        **external}} for i in range(16)]  # the most members a ring may have: the cost bound
    return {"apiVersion": "ringkeeper.io/v1alpha1", "kind": "ReplicationRing",
            "metadata": {"name": "lis"}, "spec": {"members": members}}


def admission(tool: tuple[Path, Path], docs: list[dict[str, Any]]) -> list[list[str]]:
    binary, crd = tool
    res = subprocess.run([str(binary), str(crd)],
                         input="".join(json.dumps(d) + "\n" for d in docs),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr  # 2: the API server would refuse the CRD itself
    # "\n" only: str.splitlines() also splits at U+0085 and U+2028, which Go's JSON
    # encoder leaves raw inside strings (a hostile name with NEL broke a line in two).
    out = [json.loads(line) for line in res.stdout.split("\n") if line]
    assert len(out) == len(docs)
    return out


def test_admission_agrees_with_is_host(celcheck: tuple[Path, Path]) -> None:
    hosts = [h for h in GOOD_HOSTS + BAD_HOSTS if h and len(h) <= 253]
    results = admission(celcheck, [ring(h) for h in hosts])
    for host, errors in zip(hosts, results, strict=True):
        refused = any(HOST_MESSAGE in e for e in errors)
        assert refused == (not is_host(host)), (host, errors)
        if is_host(host):
            assert errors == [], (host, errors)


def test_control_characters_in_user_or_database(celcheck: tuple[Path, Path]) -> None:
    bad_user, bad_db, fine = admission(celcheck, [
        ring("db.example.org", user="rk\nx"), ring("db.example.org", database="lis\x00"),
        ring("db.example.org", user="ringkeeper_sync", database="lis-2026")])
    assert any("must not contain control characters" in e for e in bad_user), bad_user
    assert any("must not contain control characters" in e for e in bad_db), bad_db
    assert fine == []
