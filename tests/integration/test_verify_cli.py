"""`ringkeeper verify` end to end: a real two-member ring (PostgreSQL 15 and 18 with their
sync sidecars), a clean verification, a divergence made behind the ring's back, a repair,
and a clean verification again; plus the command's errors and its output helpers."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pgserver import PASSWORD, free_port, unavailable
from ringkeeper.cli.main import main
from ringkeeper.contracts.ringconfig import RingConfig
from ringkeeper.core.verify_report import Progress
from ringkeeper.verify.schedule import report_name, scheduled_verification
from ringkeeper.verify.terminal import ProgressBar, Redactor

from .ringlocal import LocalRing, wait_until


async def cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ringkeeper", "verify", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "KUBECONFIG": "/nonexistent"})
    out, err = await asyncio.wait_for(proc.communicate(), 180)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class FakeKube:
    """Just enough of the Kubernetes API: the ring's Secret, and status patches recorded."""

    def __init__(self, ring_json: str) -> None:
        self.secret = base64.b64encode(ring_json.encode()).decode()
        self.reads: list[tuple[str, str]] = []
        self.patches: list[dict[str, Any]] = []
        kube = self

        class Core:
            def __init__(self, api: object) -> None:
                pass

            async def read_namespaced_secret(self, name: str, ns: str) -> object:
                kube.reads.append((ns, name))
                return SimpleNamespace(data={"ring.json": kube.secret})

        async def patch_status(api: object, ns: str, plural: str, name: str,
                               status: dict[str, Any], resource_version: str | None = None
                               ) -> dict[str, Any]:
            assert plural == "replicationrings" and resource_version is None
            kube.patches.append({"where": (ns, name), **status["lastVerification"]})
            return {}

        self.Core, self.patch_status = Core, patch_status

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from kubernetes_asyncio import client

        from ringkeeper.adapters import kube, resources

        async def api_client(kubeconfig: str | None = None) -> object:
            return SimpleNamespace(close=_noop)

        monkeypatch.setattr(kube, "api_client", api_client)
        monkeypatch.setattr(client, "CoreV1Api", self.Core)
        monkeypatch.setattr(resources, "patch_custom_status", self.patch_status)


async def _noop() -> None:
    return None


def streaming(ring: LocalRing) -> object:
    async def check() -> bool:
        return all(sc.state.role == "Primary" and sc.state.links and all(
            lk.state == "Streaming" for lk in sc.state.links.values())
            for sc in ring.sidecars.values())
    return check


@pytest.mark.postgres
async def test_verify_repair_reverify_on_a_real_ring(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    for major in ("15", "18"):
        if reason := unavailable(major):
            pytest.skip(f"PostgreSQL {major}: {reason}")
    ring = LocalRing(("15", "18"))
    ring.start_servers()
    outputs: list[str] = []

    async def run(*args: str) -> tuple[int, str, str]:
        code, out, err = await cli("lis", "--ring-file", str(ring.config_path),
                                   "--settle-seconds", "1", *args)
        outputs.extend([out, err])
        return code, out, err

    try:
        for n in ring.names:
            ring.start_sidecar(n)
        await wait_until("sidecars streaming", streaming(ring), 30)
        for i, n in enumerate(ring.names):
            c = await ring.conn(n)
            try:
                base = (i + 1) * 1000
                await c.execute(
                    "INSERT INTO lis.samples (id, campus, patient, status, result) "
                    "SELECT g, $2, 'p-' || g, 'collected', g / 7.0 "
                    "FROM generate_series($1::int8, $1::int8 + 199) g", base, n)
                await c.execute("INSERT INTO lis.results SELECT g, 'GLU', g * 0.5, 'ok' "
                                "FROM generate_series($1::int8, $1::int8 + 49) g", base)
            finally:
                await c.close()
        await ring.wait_converged(("lis.samples", "lis.results"), timeout=60)

        # 1. The converged ring verifies clean.
        report = tmp_path / "clean.json"
        code, out, err = await run("--full", "--report", str(report))
        assert code == 0, out + err
        data = json.loads(report.read_text())
        assert data["members"] == ["a", "b"]
        assert {t["table"] for t in data["tables"]} == {"lis.samples", "lis.results"}
        assert all(t["differences"] == [] for t in data["tables"])
        assert next(t for t in data["tables"] if t["table"] == "lis.samples")["rows"] == {
            "a": 400, "b": 400}
        assert "PASSED" in out and str(report) in out
        assert report.with_suffix(".txt").read_text().startswith("verification (full)")

        # 1b. Kubernetes mode: members from the <ring>-sync Secret, status patched.
        fake = FakeKube(ring.config_path.read_text())
        fake.install(monkeypatch)
        code = await asyncio.to_thread(main, ["verify", "lis", "-n", "lab", "--full",
                                              "--report", str(tmp_path / "k.json")])
        assert code == 0
        assert fake.reads == [("lab", "lis-sync")]
        first, last = fake.patches[0], fake.patches[-1]
        assert first["where"] == last["where"] == ("lab", "lis")
        assert first["result"] == "Running" and first["completedAt"] is None
        assert last["result"] == "Passed" and last["differences"] == 0
        assert last["tables"] == 2 and last["rowsCompared"] == 500
        assert last["report"] == str(tmp_path / "k.json") and last["mode"] == "full"
        monkeypatch.undo()

        # 2. Behind the ring's back: b's copy of row 1005 changes with no sidecar running.
        await ring.stop_all()
        ring.servers["b"].psql("UPDATE lis.samples SET status = 'tampered' WHERE id = 1005")
        code, out, err = await run("--full", "--report", str(tmp_path / "diff.json"))
        assert code == 1, out + err
        assert "1 differing key(s)" in out
        line = next(x for x in out.splitlines() if x.startswith("lis.samples"))
        assert "1005" in line and "differs" in line and " b " in line
        diff = json.loads((tmp_path / "diff.json").read_text())
        [d] = [d for t in diff["tables"] for d in t["differences"]]
        assert d["key"] == ["1005"] and d["differs_on"] == ["b"]
        assert d["versions"]["b"]["values"]["status"] == "tampered"
        assert "--repair" in err

        # 3. Without --yes (and no terminal) the plan is shown, nothing is applied.
        code, out, err = await run("--full", "--repair", "--source", "a",
                                   "--report", str(tmp_path / "plan.json"))
        assert code == 1, out + err
        assert "would apply 1 fix(es)" in out and "--yes" in err
        assert ring.servers["b"].psql(
            "SELECT status FROM lis.samples WHERE id = 1005") == "tampered"

        # 4. Repair from a, re-verified.
        code, out, err = await run("--full", "--repair", "--yes", "--source", "a",
                                   "--report", str(tmp_path / "repair.json"))
        assert code == 0, out + err
        assert "applied 1 fix(es)" in out
        assert "re-verified 1 repaired key(s): equal at every member" in out
        assert ring.servers["b"].psql(
            "SELECT status FROM lis.samples WHERE id = 1005") == "collected"

        # 5. A further verification passes; incremental mode runs too.
        code, out, err = await run("--full", "--report", str(tmp_path / "after.json"))
        assert code == 0, out + err
        code, out, err = await run("--table", "lis.samples",
                                   "--report", str(tmp_path / "incr.json"))
        assert code == 0, out + err
        assert json.loads((tmp_path / "incr.json").read_text())["mode"] == "incremental"

        # The operator's scheduled run: same tables, report written under report_dir.
        rep = await scheduled_verification(RingConfig.load(ring.config_path), mode="full",
                                           chunk_rows=100, report_dir=tmp_path / "sched")
        assert rep.passed and {t.table for t in rep.tables} == {"lis.samples", "lis.results"}
        assert (tmp_path / "sched" / report_name("lis", rep.started_at)).exists()

        # Errors: a table that does not exist, a source that is not a member.
        code, out, err = await run("--table", "lis.nope", "--report", str(tmp_path / "x.json"))
        assert code == 2 and "lis.nope does not exist" in err, out + err
        code, out, err = await run("--repair", "--source", "zz")
        assert code == 2 and "not a member" in err, out + err
    finally:
        await ring.stop_all()
        ring.destroy()
    for text in outputs:
        assert PASSWORD not in text
        assert "postgresql://" not in text


async def test_unreachable_member_is_a_one_line_error_without_password(
        tmp_path: Path) -> None:
    secret = "s3cret-Pa55"
    port = free_port()
    spec = {"members": [{"name": n, "external": {
        "host": "127.0.0.1", "database": "postgres", "engine": "postgresql",
        "version": "17", "passwordSecret": {"name": "x", "key": "y"},
        "tls": {"caSecret": {"name": "x"}}}} for n in "ab"]}
    cfg = tmp_path / "ring.json"
    cfg.write_text(json.dumps({"ring": "lis", "spec": spec, "members": {
        n: {"dsn": f"postgresql://postgres:{secret}@127.0.0.1:{port}/postgres"}
        for n in "ab"}}))
    code, out, err = await cli("lis", "--ring-file", str(cfg), "--full")
    assert code == 2
    assert err.startswith("ringkeeper verify: cannot connect to member ")
    assert len(err.strip().splitlines()) == 1, err
    assert secret not in out + err

    code, out, err = await cli("other", "--ring-file", str(cfg))
    assert code == 2 and "describes ring lis, not other" in err
    code, out, err = await cli("lis", "--ring-file", str(tmp_path / "missing.json"))
    assert code == 2 and "cannot read ring config" in err
    code, out, err = await cli("lis", "--ring-file", str(cfg), "--source", "a")
    assert code == 2 and "--source only applies with --repair" in err


def test_kubernetes_mode_reports_an_error_status(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    secret = "kube-Pa55"
    spec = {"members": [{"name": n, "external": {
        "host": "127.0.0.1", "database": "postgres", "engine": "postgresql",
        "version": "17", "passwordSecret": {"name": "x", "key": "y"},
        "tls": {"caSecret": {"name": "x"}}}} for n in "ab"]}
    fake = FakeKube(json.dumps({"ring": "lis", "spec": spec, "members": {
        n: {"dsn": f"postgresql://postgres:{secret}@127.0.0.1:{free_port()}/postgres"}
        for n in "ab"}}))
    fake.install(monkeypatch)
    assert main(["verify", "lis", "-n", "lab"]) == 2
    out, err = capsys.readouterr()
    assert "cannot connect to member" in err and secret not in out + err
    assert [p["result"] for p in fake.patches] == ["Error"]
    assert fake.patches[0]["completedAt"] and fake.patches[0]["mode"] == "incremental"


def test_redactor_hides_passwords_of_url_and_keyword_dsns() -> None:
    r = Redactor()
    r.add_dsn("postgresql://u:p%40ss@h:5432/db")
    r.add_dsn("host=h user=u password=kw-secret dbname=d")
    r.add_dsn(None)
    text = r("failed: postgresql://u:p%40ss@h/db p@ss kw-secret")
    assert "p%40ss" not in text and "p@ss" not in text and "kw-secret" not in text


def _progress(table: str, done: int, total: int) -> Progress:
    return Progress(table, "hash", done, total, done * 100, total * 100, 1.0)


def test_progress_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    bar = ProgressBar(out, ["s.a", "s.b"], tty=False, every=3600)
    bar(_progress("s.a", 2, 4))
    bar(_progress("s.a", 3, 4))  # within the interval: not printed
    bar(_progress("s.b", 2, 4))  # a new table is always shown
    bar.done()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("[###") and "25%" in lines[0] and "s.a hash: 2/4" in lines[0]
    assert "75%" in lines[1] and "s.b" in lines[1]
    assert "\r" not in out.getvalue()


def test_progress_is_one_updating_line_on_a_terminal() -> None:
    out = io.StringIO()
    bar = ProgressBar(out, ["s.a"], tty=True)
    bar(_progress("s.a", 1, 2))
    bar.done()
    text = out.getvalue()
    assert text.startswith("\r[") and "\n" not in text and text.endswith("\r\x1b[K")
