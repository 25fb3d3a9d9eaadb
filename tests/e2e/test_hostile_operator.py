"""Hostile and careless specs against the running operator (issue 13).

test_hostile_parity.py shows the API server and `ringkeeper validate` refuse the
same manifests. This file applies what gets through - and what Kubernetes only
refuses further down - for real, on the local cluster with the operator
installed by Helm, and checks five promises for every case:

1. no command ran: each hostile value names a canary path (/tmp/rk-pwned-<uuid>-...),
   which exists neither on the host nor in any pod's folders under the cluster state;
2. no Secret leaked: no Secret value of the namespace (raw or base64) is in the
   operator's log, the database pod's logs, an Event or any object's status;
3. nothing foreign adopted: hand-made objects in the way keep their resourceVersion,
   gain no owner reference, and survive the deletion of the hostile resources;
4. no cycle crashed: no Python traceback in the operator's log, no container restart;
5. nothing stuck silently: a resource that is not Ready says why within a minute
   (Ready, Reconciled or Accepted False with a reason and a message), or the API
   server refused it at admission.

Cheap by construction: one live single-instance Campus (hostile parameters and
annotations are patched onto it) and one careless one (an unknown time zone) are
the only database pods. A ResourceQuota then caps the namespace's pods, so every
other Campus the operator accepts gets its objects but no pods (Kubernetes
refuses them downstream), and the rest are refused before anything starts, or
are rings, drills and satellites, which start nothing.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, expected_error
from e2e.campus_helpers import install_operator
from e2e.conftest import Cluster, wait_for
from ringkeeper.core.annotations import parse_fenced

pytestmark = pytest.mark.cluster

TOKEN = f"rk-pwned-{uuid.uuid4().hex[:12]}"
LIVE = "live"
CARELESS = "tz-careless"
HOSTILE = REPO / "tests" / "hostile"
OUTCOME_SECONDS = 60.0
# Cases are looked at between the live Campus's patches: an outcome seen this much late
# may have come in time.
LOOK_SLACK = 20.0
TRACEBACK = "Traceback (most recent call last)"
# A resource not Ready must say why in one of these, with status False.
WHY = ("Ready", "Reconciled", "Accepted")


def traceback_blocks(log: str, keep: int = 60) -> list[str]:
    """Each traceback in the operator's log, whole (its header, the frames, the error line
    and any chained exception, up to `keep` lines): a header alone cannot be traced."""
    lines = log.splitlines()
    chain = ("During handling", "The above exception", TRACEBACK)
    blocks: list[str] = []
    i = 0
    while i < len(lines):
        if TRACEBACK not in lines[i]:
            i += 1
            continue
        start, i = i, i + 1
        while i < len(lines) and i - start < keep:
            ln = lines[i]
            framed = ln.startswith((" ", "\t")) or ln.startswith(chain)
            ahead = lines[i + 1:i + 3]
            chained = any(a.startswith(chain) for a in ahead if a) and not any(
                a and not a.startswith(chain) for a in ahead[:1])
            i += 1
            if not (framed or chained):
                break  # the exception's own line ends the block
        blocks.append("\n".join(lines[start:i]))
    return blocks


def canary(case: str) -> str:
    return f"/tmp/{TOKEN}-{case}"


def sh(case: str) -> str:
    """A shell payload that, if any shell ever ran it, leaves the canary behind."""
    return f"$(touch {canary(case)})"


def campus(name: str, instances: int = 1, annotations: dict[str, str] | None = None,
           **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if annotations:
        meta["annotations"] = annotations
    # Only the live Campus has a server to watch closely; the HA loops of the pod-less
    # ones poll slowly, so that forty of them leave the operator time for the rest.
    period = 1 if name in (LIVE, CARELESS) else 5
    return {"apiVersion": "ringkeeper.io/v1alpha1", "kind": "Campus", "metadata": meta,
            "spec": {"engine": "postgresql", "version": "17", "instances": instances,
                     "failover": {"detectionDelaySeconds": 3 * period,
                                  "selfFenceAfterSeconds": 2 * period,
                                  "healthCheckPeriodSeconds": period},
                     # One instance has no synchronous standby to wait for.
                     "synchronous": {"number": min(1, instances - 1),
                                     "dataDurability": "required" if instances > 1
                                     else "preferred"}, **spec}}


def ring(name: str, *members: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "ringkeeper.io/v1alpha1", "kind": "ReplicationRing",
            "metadata": {"name": name}, "spec": {"members": list(members), **spec}}


def ref(name: str) -> dict[str, Any]:
    return {"name": name, "campusRef": {"name": name}}


def external(name: str, secret: str, key: str = "password", ca: str = "ext-ca",
             ca_key: str = "ca.crt", **over: Any) -> dict[str, Any]:
    return {"name": name, "external": {
        "host": "10.20.30.40", "port": 5432, "database": "app", "engine": "postgresql",
        "version": "15", "user": "ringkeeper_sync",
        "passwordSecret": {"name": secret, "key": key},
        "tls": {"caSecret": {"name": ca, "key": ca_key}}, **over}}


def drill(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "ringkeeper.io/v1alpha1", "kind": "Drill", "metadata": {"name": name},
            "spec": {"target": {"kind": "Campus", "name": LIVE}, "scenario": "primaryKill",
                     **spec}}


def satellite(name: str, table: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "ringkeeper.io/v1alpha1", "kind": "Satellite",
            "metadata": {"name": name},
            "spec": {"parentRef": {"name": LIVE}, "version": "17",
                     "tables": [{"name": "lis.samples", **table}]}}


@dataclass
class Case:
    """One hostile resource applied to the cluster; `expect` lists the reasons (of a False
    Ready/Reconciled/Accepted/AnnotationsValid condition) that are the right answer, or
    "admission" when the API server must refuse it; empty: any reason that says why."""

    id: str
    kind: str
    name: str
    manifest: dict[str, Any] | str
    expect: tuple[str, ...] = ()
    xfail: str | None = None
    early: bool = False  # applied before the pod quota: a database pod may start


@dataclass
class Patch:
    """A hostile value patched onto the live Campus (annotations or parameters)."""

    id: str
    patch: dict[str, Any]
    check: str  # fenced | switchover | parameter | admission
    value: str = ""
    xfail: str | None = None


def _corpus_ok() -> list[Case]:
    """Every `# expect: ok` file of tests/hostile, renamed so they can live side by side."""
    out = []
    for path in sorted(HOSTILE.glob("*.yaml")):
        if expected_error(path) != "ok":
            continue
        text = path.read_text(encoding="utf-8")
        kind = re.search(r"^kind: (\S+)$", text, re.M)
        old = re.search(r"^metadata:\n  name: (\S+)$", text, re.M)
        assert kind and old, path
        name = f"ok-{path.stem}"[:40]
        # Text, not YAML round trips: the file means what kubectl's YAML 1.1 reads
        # (a bare y is a boolean there and a string to PyYAML).
        text = text.replace(f"metadata:\n  name: {old.group(1)}\n",
                            f"metadata:\n  name: {name}\n", 1)
        out.append(Case(f"corpus-{path.stem}", kind.group(1), name, text))
    return out


FOREIGN_SECRETS = {
    # name: (labels, data)
    "handsec-superuser": ({}, {"password": f"handmade-{uuid.uuid4().hex}"}),
    "payroll-sync": ({}, {"db": f"salaries-{uuid.uuid4().hex}"}),
    "ghost-ring": ({}, {"ring.json": f"not-yours-{uuid.uuid4().hex}"}),
    "unlabelled-pw": ({}, {"password": f"unlabelled-{uuid.uuid4().hex}"}),
    "other-ring-pw": ({"ringkeeper.io/ring": "someone-else"},
                      {"password": f"other-ring-{uuid.uuid4().hex}"}),
    "ext-ca": ({"ringkeeper.io/ring": "injector"},
               {"ca.crt": f"-----BEGIN CERTIFICATE-----{uuid.uuid4().hex}"}),
    "injector-pw": ({"ringkeeper.io/ring": "injector"},
                    {"password": f"usable-{uuid.uuid4().hex}"}),
    "steal-ca-pw": ({"ringkeeper.io/ring": "steal-ca"},
                    {"password": f"steal-ca-{uuid.uuid4().hex}"}),
}
# kind, name, kubectl create arguments
FOREIGN_OTHERS = [
    ("service", "hand-rw", ["service", "clusterip", "hand-rw", "--tcp=5432:5432"]),
    ("serviceaccount", "handsa-instance", ["serviceaccount", "handsa-instance"]),
    ("poddisruptionbudget", "handpdb", ["pdb", "handpdb", "--selector=app=mine",
                                        "--max-unavailable=1"]),
    ("role", "handrole-instance", ["role", "handrole-instance", "--verb=get",
                                   "--resource=pods"]),
]

CASES: list[Case] = [
    # The only database pods: the live Campus (hostile but admitted strings in its spec;
    # hostile annotations and parameters are patched onto it below) and a careless one
    # whose server cannot start (a time zone it does not know).
    Case("live-campus-hostile-strings", "Campus", LIVE, campus(
        LIVE, displayName=f"朝晖 {sh('live-display')}",
        parameters={"log_line_prefix": f"%m {sh('live-llp')} "}), expect=("Ready",),
        early=True),
    Case("careless-unknown-timezone", "Campus", CARELESS, campus(
        CARELESS, parameters={"timezone": "Mars/Olympus_Mons"}), early=True),
    *_corpus_ok(),
    # Kubernetes refuses these downstream (the StatefulSet, its claims or pods).
    Case("requests-above-limits", "Campus", "res-above", campus(
        "res-above", resources={"requests": {"cpu": "2"}, "limits": {"cpu": "1"}})),
    Case("negative-memory", "Campus", "res-negative", campus(
        "res-negative", resources={"limits": {"memory": "-1Gi"}})),
    Case("malformed-cpu", "Campus", "res-malformed", campus(
        "res-malformed", resources={"requests": {"cpu": "1.2.3"}})),
    Case("huge-memory", "Campus", "res-huge", campus(
        "res-huge", resources={"requests": {"memory": "1e400"}})),
    Case("negative-storage", "Campus", "storage-negative", campus(
        "storage-negative", storage={"size": "-5Gi"})),
    Case("malformed-storage", "Campus", "storage-malformed", campus(
        "storage-malformed", storage={"size": "1.2.3"})),
    Case("storage-class-shell", "Campus", "storage-class-shell", campus(
        "storage-class-shell", storage={"storageClass": sh("storage-class")})),
    Case("image-shell-spaces", "Campus", "image-spaces", campus(
        "image-spaces", image=f"busybox; touch {canary('image-spaces')}")),
    Case("image-shell-no-spaces", "Campus", "image-nospace", campus(
        "image-nospace", image=f"busybox;touch${{IFS}}{canary('image-nospace')}")),
    Case("display-name-shell", "Campus", "display-shell", campus(
        "display-shell", displayName=f"`touch {canary('display')}` {sh('display2')}")),
    # Names that collide with the live Campus's objects or with hand-made ones.
    Case("campus-live-rw", "Campus", f"{LIVE}-rw", campus(f"{LIVE}-rw"),
         expect=("ForeignObject",)),
    Case("campus-live-ro", "Campus", f"{LIVE}-ro", campus(f"{LIVE}-ro"),
         expect=("ForeignObject",)),
    Case("campus-live-r", "Campus", f"{LIVE}-r", campus(f"{LIVE}-r"),
         expect=("ForeignObject",)),
    Case("foreign-service-rw", "Campus", "hand", campus("hand"), expect=("ForeignObject",)),
    Case("foreign-secret-superuser", "Campus", "handsec", campus("handsec"),
         expect=("ForeignObject",)),
    Case("foreign-serviceaccount", "Campus", "handsa", campus("handsa"),
         expect=("ForeignObject",)),
    Case("foreign-pdb", "Campus", "handpdb", campus("handpdb"), expect=("ForeignObject",)),
    Case("foreign-role", "Campus", "handrole", campus("handrole"), expect=("ForeignObject",)),
    # Malformed fenced-instances on pod-less Campuses (the HA loop reads them all the same);
    # the nastier ones are patched onto the live Campus below.
    *(Case(f"fenced-on-create-{i}", "Campus", f"fenced-{i}", campus(
        f"fenced-{i}", annotations={"ringkeeper.io/fenced-instances": v}),
        expect=("InvalidAnnotation",)) for i, v in enumerate([
            '"fenced-0-0"', '{"a": 1}', '["fenced-2-9"]', '["fenced-3-0", "fenced-3-0"]',
            "[null]", '["Fenced-5-0"]', '[1, "../../etc"]',
            # Under the API server's 256 KiB even twice over (apply's last-applied copy).
            "x" * 100_000])),
    # Rings: foreign Secrets in the way, and Secrets a ring must never send anywhere.
    Case("ring-foreign-sync-secret", "ReplicationRing", "payroll",
         ring("payroll", ref("nowhere-a"), ref("nowhere-b")), expect=("ForeignObject",)),
    Case("ring-foreign-campus-ring-secret", "ReplicationRing", "claimer",
         ring("claimer", ref("ghost"), ref("nowhere-a")), expect=("ForeignObject",)),
    *(Case(f"ring-password-{LIVE}-{kind}", "ReplicationRing", f"steal-{kind}",
           ring(f"steal-{kind}", ref("nowhere-a"),
                external("ext", f"{LIVE}-{kind}", "token" if kind == "agent" else "password")),
           expect=("SecretGeneratedByOperator",))
      for kind in ("superuser", "replication", "app", "agent")),
    Case("ring-ca-live-superuser", "ReplicationRing", "steal-ca",
         ring("steal-ca", ref("nowhere-a"), external("ext", "steal-ca-pw",
                                                     ca=f"{LIVE}-superuser", ca_key="password")),
         expect=("SecretGeneratedByOperator",)),
    Case("ring-password-own-sync", "ReplicationRing", "selfref",
         ring("selfref", ref("nowhere-a"), external("ext", "selfref-sync", "ring.json")),
         expect=("SecretGeneratedByOperator",)),
    Case("ring-password-unlabelled", "ReplicationRing", "unlabelled",
         ring("unlabelled", ref("nowhere-a"), external("ext", "unlabelled-pw")),
         expect=("SecretNotLabelled",)),
    Case("ring-password-other-ring", "ReplicationRing", "other",
         ring("other", ref("nowhere-a"), external("ext", "other-ring-pw")),
         expect=("SecretNotLabelled",)),
    Case("ring-password-foreign-sync", "ReplicationRing", "reader",
         ring("reader", ref("nowhere-a"), external("ext", "payroll-sync", "db")),
         expect=("SecretNotLabelled",)),
    Case("ring-password-missing", "ReplicationRing", "missing",
         ring("missing", ref("nowhere-a"), external("ext", "no-such-secret")),
         expect=("SecretNotFound",)),
    Case("ring-external-shell-user-db", "ReplicationRing", "injector",
         ring("injector", ref("nowhere-a"), external(
             "ext", "injector-pw", user=f"x'; {sh('ext-user')}; '",
             database=f"app' host='{canary('ext-db')}")), expect=()),
    Case("ring-external-shell-host", "ReplicationRing", "shellhost",
         ring("shellhost", ref("nowhere-a"), external("ext", "injector-pw",
                                                      host=sh("ext-host"))),
         expect=("admission",)),
    Case("ring-member-named-like-a-secret", "ReplicationRing", "secretname",
         ring("secretname", ref(f"{LIVE}-superuser"), ref("nowhere-a"))),
    # Drills start nothing; a satellite whose parent is in no ring starts nothing either.
    # Raw SQL filters are refused at admission; a structured filter's values are quoted.
    Case("drill-on-live-every-minute", "Drill", "kill-live",
         drill("kill-live", schedule="* * * * *"), expect=("ScheduleTooFrequent",)),
    Case("satellite-row-filter-shell", "Satellite", "sat-shell",
         satellite("sat-shell", {"rowFilter": f"true; {sh('rowfilter')}; --"}),
         expect=("admission",)),
    Case("satellite-filter-value-shell", "Satellite", "sat-value",
         satellite("sat-value", {"filter": {"all": [
             {"column": "site", "op": "Equals", "values": [f"x'; {sh('filter')}; --"]}]}}),
         expect=("ParentNotInRing",)),
]

PATCHES: list[Patch] = [
    *(Patch(f"fenced-{i}", {"metadata": {"annotations": {
        "ringkeeper.io/fenced-instances": v}}}, "fenced", v) for i, v in enumerate([
            f"{LIVE}-2",
            sh("fenced"),
            f"\x1b[31m[\n{sh('fenced-ansi')}",
            # Nested 3000 deep, under the 4096-character cap: json.loads raised
            # RecursionError here and the HA cycle failed every second.
            "[" * 3000,
        ])),
    Patch("fenced-number", {"metadata": {"annotations": {
        "ringkeeper.io/fenced-instances": 5}}}, "admission"),
    Patch("fenced-list", {"metadata": {"annotations": {
        "ringkeeper.io/fenced-instances": [f"{LIVE}-0"]}}}, "admission"),
    Patch("annotations-over-256k", {"metadata": {"annotations": {
        "ringkeeper.io/fenced-instances": "y" * 270_000}}}, "admission"),
    Patch("switchover-newline", {"metadata": {"annotations": {
        "ringkeeper.io/switchover-to": f"{LIVE}-9\n"}}}, "switchover", f"{LIVE}-9\n"),
    Patch("switchover-shell", {"metadata": {"annotations": {
        "ringkeeper.io/switchover-to": sh("switchover")}}}, "switchover", sh("switchover")),
    *(Patch(f"log-line-prefix-{i}", {"spec": {"parameters": {"log_line_prefix": v}}},
            "parameter", v) for i, v in enumerate([
                f"%m [%p] {sh('llp-dollar')} ",
                f"%m `touch {canary('llp-backtick')}` ",
                f"%m ; touch {canary('llp-semicolon')} # ",
                f"%m | touch {canary('llp-pipe')} && echo ",
            ])),
    Patch("log-line-prefix-quote", {"spec": {"parameters": {
        "log_line_prefix": f"'; COPY x TO PROGRAM 'touch {canary('llp-quote')}"}}},
        "admission"),
    # Careless, not hostile: the server does not know this zone; a reload keeps the old one.
    Patch("timezone-unknown", {"spec": {"parameters": {"timezone": "Mars/Olympus_Mons"}}},
          "parameter", "Mars/Olympus_Mons"),
]


@dataclass
class Result:
    outcome: str = "pending"
    reason: str = ""
    message: str = ""
    problems: list[str] = field(default_factory=list)


@dataclass
class Run:
    ns: str
    results: dict[str, Result]
    foreign_before: dict[str, dict[str, Any]]
    foreign_after: dict[str, dict[str, Any] | None]
    canaries: list[str]
    leaks: list[str]
    tracebacks: list[str]
    restarts: tuple[int, int]
    live_rw_after: dict[str, Any] | None
    selftest: dict[str, bool]


def _conds(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


def judge(case: Case, obj: dict[str, Any]) -> Result | None:
    """The case's outcome once it has one, else None (still waiting)."""
    conds = _conds(obj)
    if "Accepted" not in conds:
        return None
    said = [c for t, c in conds.items() if (t in WHY or t == "AnnotationsValid")
            and c.get("status") == "False" and c.get("reason") and c.get("message")]
    ready = conds.get("Ready", {}).get("status") == "True"
    if case.expect == ("Ready",):
        return Result("Ready", "Ready", conds["Ready"].get("message", "")) if ready else None
    if case.expect:
        hit = next((c for c in said if c["reason"] in case.expect), None)
        if hit is None:
            return None
        return Result("not Ready, says why", hit["reason"], hit["message"])
    if ready:
        return Result("Ready", "Ready", conds["Ready"].get("message", ""))
    why = next((c for c in said if c["type"] in WHY), None)
    if why is None:
        return None
    return Result("not Ready, says why", why["reason"], why["message"])


def _apply(cluster: Cluster, ns: str, manifest: dict[str, Any] | str
           ) -> subprocess.CompletedProcess[str]:
    text = manifest if isinstance(manifest, str) else json.dumps(manifest)
    return cluster.kubectl("-n", ns, "apply", "-f", "-", input=text, check=False)


def _patch(cluster: Cluster, ns: str, patch: dict[str, Any]
           ) -> subprocess.CompletedProcess[str]:
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump(patch, f)
        f.flush()
        return cluster.kubectl("-n", ns, "patch", "campus", LIVE, "--type", "merge",
                               "--patch-file", f.name, check=False)


def _refusal(res: subprocess.CompletedProcess[str]) -> str:
    return " ".join((res.stderr or res.stdout).split())[:300]


def _operator_pod(cluster: Cluster, ns: str) -> dict[str, Any]:
    pods = cluster.get("-n", ns, "pods", "-l", "app.kubernetes.io/component=operator")
    (pod,) = pods["items"]
    return dict(pod)


def _restarts(pod: dict[str, Any]) -> int:
    return sum(int(s.get("restartCount", 0))
               for s in (pod.get("status") or {}).get("containerStatuses") or [])


def _pod_log(cluster: Cluster, ns: str, pod: str, container: str | None = None) -> str:
    """Every run of the pod's containers (the dev runtime appends restarts to one file)."""
    args = ["logs", "-n", ns, pod] + (["-c", container] if container else [])
    return cluster.dev(*args).stdout


def _operator_log(cluster: Cluster, ns: str) -> str:
    return _pod_log(cluster, ns, _operator_pod(cluster, ns)["metadata"]["name"])


_T0 = time.monotonic()


def _say(what: str) -> None:
    print(f"[{time.monotonic() - _T0:6.1f}s] {what}", flush=True)


def _secret_values(cluster: Cluster, ns: str) -> dict[str, str]:
    """Every secret-looking value of the namespace: 'secret/key' -> decoded value.
    Usernames and Helm's release records are no secrets; a ring.json holds the
    passwords of Secrets listed here already."""
    out = {}
    for s in cluster.get("-n", ns, "secrets")["items"]:
        if s.get("type", "").startswith("helm.sh/"):
            continue
        for key, value in (s.get("data") or {}).items():
            text = base64.b64decode(value).decode(errors="replace")
            ours = bool(s["metadata"].get("ownerReferences"))
            if key == "username" or (key == "ring.json" and ours) or len(text) < 12:
                continue
            out[f"{s['metadata']['name']}/{key}"] = text
    return out


def find_leaks(values: dict[str, str], texts: dict[str, str]) -> list[str]:
    found = []
    for where, text in texts.items():
        for what, value in values.items():
            for form in (value, base64.b64encode(value.encode()).decode()):
                if form in text:
                    found.append(f"{what} in {where}")
    return found


def find_canaries(state: Path, token: str = TOKEN) -> list[str]:
    hits = [str(p) for p in Path("/tmp").glob(f"{token}*")]
    res = subprocess.run(["find", str(state), "-name", f"*{token}*"], capture_output=True,
                         text=True, timeout=120)
    return hits + res.stdout.split()


def _poll(what: str, check: Callable[[], Any], timeout: float) -> Any:
    return wait_for(what, check, timeout=timeout, interval=1.0)


@pytest.fixture(scope="module")
def run(cluster: Cluster) -> Iterator[Run]:
    # The `namespace` fixture's life, for the whole module: one operator for every case.
    ns = f"t-hostile-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    release = None
    try:
        wait_for("the default ServiceAccount", lambda: cluster.kubectl(
            "-n", ns, "get", "serviceaccount", "default", check=False).returncode == 0)
        _say(f"namespace {ns}")
        release = install_operator(cluster, ns)
        yield _run(cluster, ns)
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            cluster.kubectl("-n", ns, "delete", "campuses,replicationrings,drills,satellites",
                            "--all", "--wait=true", "--timeout=60s", check=False, timeout=90)
        if release:
            cluster.helm("uninstall", release, "-n", ns, "--wait", "--timeout", "60s",
                         check=False)
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def _run(cluster: Cluster, ns: str) -> Run:
    results = {c.id: Result() for c in CASES} | {p.id: Result() for p in PATCHES}
    restarts_before = _restarts(_operator_pod(cluster, ns))
    _say("operator running")

    # Hand-made objects in the way, created before anything of ours.
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda item: cluster.kubectl("-n", ns, "apply", "-f", "-", input=json.dumps({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": item[0], "labels": item[1][0]}, "stringData": item[1][1]})),
            FOREIGN_SECRETS.items()))
        list(pool.map(lambda args: cluster.kubectl("-n", ns, "create", *args),
                      [a for _, _, a in FOREIGN_OTHERS]))
    foreign = [("secret", n) for n in FOREIGN_SECRETS] + [(k, n) for k, n, _ in FOREIGN_OTHERS]
    before = {f"{k}/{n}": cluster.get("-n", ns, k, n) for k, n in foreign}

    early = [c for c in CASES if c.early]
    applied = {c.id: _apply(cluster, ns, c.manifest) for c in early}
    for c in early:
        assert applied[c.id].returncode == 0, f"{c.id}: {_refusal(applied[c.id])}"
    _poll("the two database pods", lambda: all(cluster.kubectl(
        "-n", ns, "get", "pod", f"{c}-0", check=False).returncode == 0
        for c in (LIVE, CARELESS)), 90)
    _say("database pods created")
    pods = len(cluster.get("-n", ns, "pods")["items"])
    cluster.kubectl("-n", ns, "create", "quota", "no-more-pods", f"--hard=pods={pods}")

    # Everything else at once.
    rest = [c for c in CASES if not c.early]
    with ThreadPoolExecutor(6) as pool:
        applied |= dict(zip([c.id for c in rest], pool.map(
            lambda c: _apply(cluster, ns, c.manifest), rest), strict=True))
    for cid, res in applied.items():
        if res.returncode != 0:
            results[cid] = Result("refused at admission", "admission", _refusal(res))
    deadline = time.monotonic() + OUTCOME_SECONDS
    _say(f"applied {len(CASES)} resources")

    # Meanwhile, hostile annotations and parameters on the live, serving Campus, one at
    # a time (the outcome window of the rest runs on).
    live = _poll("the live Campus Ready", lambda: (lambda s: s if s.get("phase") == "Ready"
                 and s.get("currentPrimary") else None)(
                     cluster.get("-n", ns, "campus", LIVE).get("status") or {}), 150)
    _say("live Campus Ready")
    primary = live["currentPrimary"]
    names = [f"{LIVE}-0"]
    conf = cluster.state / "pvc" / ns / f"data-{LIVE}-0" / "pgdata" / "ringkeeper.conf"
    for p in PATCHES:
        results[p.id] = _patch_case(cluster, ns, p, names, conf)
        _say(f"{p.id}: {results[p.id].outcome} {results[p.id].problems or ''}")
        _evaluate(cluster, ns, results, deadline)
    while _evaluate(cluster, ns, results, deadline) and time.monotonic() < deadline:
        time.sleep(1.0)
    # What each says now: a refused write (Reconciled) tells more than "0/1 ready".
    objs = {(o["kind"], o["metadata"]["name"]): o for o in cluster.get(
        "-n", ns, "campuses,replicationrings,drills,satellites")["items"]}
    for c in CASES:
        r, obj = results[c.id], objs.get((c.kind, c.name))
        if r.outcome != "not Ready, says why" or c.expect or obj is None:
            continue
        conds = _conds(obj)
        best = next((conds[t] for t in ("Reconciled", "Accepted", "Ready")
                     if conds.get(t, {}).get("status") == "False"
                     and conds[t].get("reason") and conds[t].get("message")), None)
        if best is not None:
            r.reason, r.message = best["reason"], best["message"]
    for c in CASES:
        r = results[c.id]
        if r.outcome == "pending":
            r.outcome = "STUCK"
            r.problems.append(f"no condition saying why within {OUTCOME_SECONDS:.0f}s: "
                              f"{r.message}")
        elif "admission" in c.expect and r.outcome != "refused at admission":
            r.problems.append("expected a refusal at admission")
        elif r.outcome == "refused at admission" and c.expect and "admission" not in c.expect:
            r.problems.append(f"refused at admission, expected {c.expect}: {r.message}")
    _say("outcomes: " + ", ".join(f"{c.id}={results[c.id].outcome}" for c in CASES
                                  if results[c.id].problems))

    _patch(cluster, ns, {"metadata": {"annotations": {
        "ringkeeper.io/fenced-instances": None}}, "spec": {"parameters": {"timezone": None}}})
    _poll("AnnotationsValid again", lambda: _conds(cluster.get("-n", ns, "campus", LIVE)).get(
        "AnnotationsValid", {}).get("status") == "True", 30)
    st = cluster.get("-n", ns, "campus", LIVE)["status"]
    if st.get("currentPrimary") != primary or st.get("fencedInstances") or \
            _conds({"status": st}).get("Ready", {}).get("status") != "True":
        results["fenced-0"].problems.append(f"live Campus disturbed: {json.dumps(st)[:400]}")

    _say("live Campus checked")
    # Evidence, before anything is deleted.
    selftest = {}
    log = _operator_log(cluster, ns)
    texts = {"operator log": log,
             "events": "\n".join(e.get("message", "") for e in
                                 cluster.get("-n", ns, "events")["items"]),
             "statuses": json.dumps([o.get("status") for o in cluster.get(
                 "-n", ns, "campuses,replicationrings,drills,satellites")["items"]])}
    for container in ("database", "sync"):
        texts[f"{LIVE}-0/{container} log"] = _pod_log(cluster, ns, f"{LIVE}-0", container)
    values = _secret_values(cluster, ns)
    # The checkers can fail: the namespace's name is in the log, and a planted canary
    # under the state folder is found.
    selftest["leak check sees the log"] = bool(find_leaks({"ns": ns}, {"log": log}))
    planted = cluster.state / f"{TOKEN}-selftest"
    planted.touch()
    selftest["canary check sees the state folder"] = str(planted) in find_canaries(
        cluster.state)
    planted.unlink()
    canaries = find_canaries(cluster.state)
    leaks = find_leaks(values, texts)
    tracebacks = traceback_blocks(log)

    # Delete every hostile resource: what was in the way stays, untouched.
    hostile = [c for c in CASES if results[c.id].outcome != "refused at admission"
               and c.name != LIVE]
    for kind in ("campus", "replicationring", "drill", "satellite"):
        names_k = [c.name for c in hostile if c.kind.lower() == kind]
        if names_k:
            cluster.kubectl("-n", ns, "delete", kind, *names_k, "--wait=true",
                            "--timeout=90s", check=False, timeout=120)
    _say("hostile resources deleted")
    after: dict[str, dict[str, Any] | None] = {}
    for k, n in foreign:
        res = cluster.kubectl("-n", ns, "get", k, n, "-o", "json", check=False)
        after[f"{k}/{n}"] = json.loads(res.stdout) if res.returncode == 0 else None
    res = cluster.kubectl("-n", ns, "get", "service", f"{LIVE}-rw", "-o", "json", check=False)
    live_rw = json.loads(res.stdout) if res.returncode == 0 else None
    log = _operator_log(cluster, ns)
    tracebacks += [b for b in traceback_blocks(log) if b not in tracebacks]
    restarts_after = _restarts(_operator_pod(cluster, ns))
    return Run(ns, results, before, after, canaries, leaks, tracebacks,
               (restarts_before, restarts_after), live_rw, selftest)


def _evaluate(cluster: Cluster, ns: str, results: dict[str, Result], deadline: float) -> int:
    """One look at every case still waiting for its outcome; how many still wait."""
    pending = [c for c in CASES if results[c.id].outcome == "pending"]
    if not pending:
        return 0
    objs = {(o["kind"], o["metadata"]["name"]): o for o in cluster.get(
        "-n", ns, "campuses,replicationrings,drills,satellites")["items"]}
    for c in pending:
        obj = objs.get((c.kind, c.name))
        if obj is None:
            results[c.id].problems = ["admitted but gone"]
            continue
        got = judge(c, obj)
        if got is not None:
            late = time.monotonic() - deadline
            if late > LOOK_SLACK:
                got.problems.append(f"said why only {late:.0f}s after the window")
            results[c.id] = got
        else:
            results[c.id].message = json.dumps(_conds(obj), default=str)[:400]
    return sum(1 for c in pending if results[c.id].outcome == "pending")


def _patch_case(cluster: Cluster, ns: str, p: Patch, names: list[str], conf: Path) -> Result:
    res = _patch(cluster, ns, p.patch)
    if p.check == "admission":
        if res.returncode == 0:
            return Result("admitted", problems=["expected a refusal at admission"])
        return Result("refused at admission", "admission", _refusal(res))
    if res.returncode != 0:
        return Result("refused at admission", "admission", _refusal(res),
                      problems=["expected the API server to admit it"])
    try:
        if p.check == "fenced":
            parsed = parse_fenced(p.value, names)
            assert parsed.error is not None
            want = parsed.error + " (ignored until corrected)"

            def said() -> dict[str, Any] | None:
                c = _conds(cluster.get("-n", ns, "campus", LIVE)).get("AnnotationsValid")
                return c if c and c.get("message") == want else None

            c = _poll(f"AnnotationsValid for {p.id}", said, 30)
            return Result("ignored, says why", c["reason"], c["message"])
        if p.check == "switchover":
            def refused() -> dict[str, Any] | None:
                anns = cluster.get("-n", ns, "campus", LIVE)["metadata"].get("annotations") or {}
                if "ringkeeper.io/switchover-to" in anns:
                    return None
                return next((e for e in cluster.get("-n", ns, "events")["items"]
                             if e.get("reason") == "SwitchoverRefused"
                             and p.value.strip() in e.get("message", "")), None)

            e = _poll(f"switchover refused for {p.id}", refused, 30)
            return Result("refused (Event)", e["reason"], e["message"])
        line = next(f"{k} = " for k in p.patch["spec"]["parameters"])

        def written() -> str | None:
            text = conf.read_text() if conf.exists() else ""
            return next((ln for ln in text.splitlines()
                         if ln.startswith(line) and p.value in ln), None)

        ln = _poll(f"{p.id} in ringkeeper.conf", written, 30)
        ok = _conds(cluster.get("-n", ns, "campus", LIVE)).get("Ready", {})
        problems = [] if ok.get("status") == "True" else [f"live Campus not Ready: {ok}"]
        return Result("written quoted, still Ready", "Ready", ln, problems)
    except AssertionError as exc:
        return Result("STUCK", problems=[str(exc)[:400]])


def _marks(item: Case | Patch) -> Any:
    if item.xfail:
        return pytest.param(item, id=item.id, marks=pytest.mark.xfail(strict=True,
                                                                       reason=item.xfail))
    return pytest.param(item, id=item.id)


def test_enough_cases() -> None:
    own = [c for c in CASES if not c.id.startswith("corpus-")]
    assert len(own) + len(PATCHES) >= 50


@pytest.mark.parametrize("case", [_marks(c) for c in CASES])
def test_hostile_resource(run: Run, case: Case) -> None:
    r = run.results[case.id]
    assert not r.problems, f"{case.id}: {r.outcome}: {r.problems}"
    assert r.outcome in ("Ready", "not Ready, says why", "refused at admission"), r
    assert r.reason and r.message, r


@pytest.mark.parametrize("patch", [_marks(p) for p in PATCHES])
def test_hostile_patch_on_live_campus(run: Run, patch: Patch) -> None:
    r = run.results[patch.id]
    assert not r.problems, f"{patch.id}: {r.outcome}: {r.problems}"
    assert r.reason and r.message, r


def test_no_command_ran(run: Run) -> None:
    assert run.selftest["canary check sees the state folder"]
    assert run.canaries == []


def test_no_secret_leaked(run: Run) -> None:
    assert run.selftest["leak check sees the log"]
    assert run.leaks == []


def test_nothing_foreign_adopted(run: Run) -> None:
    for key, was in run.foreign_before.items():
        now = run.foreign_after[key]
        assert now is not None, f"{key} was deleted with the hostile resources"
        assert now["metadata"]["resourceVersion"] == was["metadata"]["resourceVersion"], key
        assert not now["metadata"].get("ownerReferences"), key
    # Campus live-rw is gone; the live Campus's Service of that name is still the live's.
    assert run.live_rw_after is not None
    owners = run.live_rw_after["metadata"]["ownerReferences"]
    assert [(o["kind"], o["name"]) for o in owners] == [("Campus", LIVE)]


def test_no_cycle_crashed(run: Run) -> None:
    assert run.tracebacks == [], "\n\n".join(run.tracebacks)
    assert run.restarts[1] == run.restarts[0]


def test_summary(run: Run) -> None:
    rows = [(cid, r.outcome, r.reason) for cid, r in run.results.items()]
    width = max(len(cid) for cid, _, _ in rows)
    print(f"\n{'case':<{width}}  {'outcome':<28}  condition reason")
    for cid, outcome, reason in rows:
        print(f"{cid:<{width}}  {outcome:<28}  {reason}")
    print(f"canaries: {run.canaries or 'none'}; leaks: {run.leaks or 'none'}; "
          f"tracebacks: {len(run.tracebacks)}; operator restarts: "
          f"{run.restarts[0]} -> {run.restarts[1]}")
    assert len(rows) >= 50
