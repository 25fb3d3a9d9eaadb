"""`ringkeeper verify <ring>`: compare a ring's members row by row, optionally repair.

Members come from a ring config file (`--ring-file`, local rings and tests) or from the
`<ring>-sync` Secret the operator keeps in the ring's namespace. In Kubernetes mode the
ReplicationRing's `status.lastVerification` follows the run. Connection strings carry
passwords: only member names are ever printed.

Satellites in the ring config are compared with their parents too (`satellites.py`:
their tables against the parent's rows that match their filters, in full), reported in
their own section, and never repaired.

Exit codes: 0 the members agree (or every difference was repaired and re-checked) and
every satellite equals its parent, 1 differences remain (between members, or between a
satellite and its parent), 2 the verification could not run (usage, config,
connections) or a satellite could not be compared (no address, unreachable, a table
missing): never counted as equal.
What the command shows people (redaction, progress, clipped tables) is `terminal.py`'s job.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from ..contracts.ringconfig import RingConfig
from ..core.verify import MemberConn, Mode
from ..core.verify_report import (
    Progress,
    Report,
    SatelliteVerification,
    render_text,
    satellites_exit_code,
    verification_status,
)
from .members import VerifyError
from .repair import RepairResult, repair
from .report import write_report
from .runner import verify
from .satellites import verify_satellites
from .schedule import members_of, report_name, ring_tables
from .terminal import ProgressBar, Redactor, clip

PROG = "ringkeeper verify"
GROUP, VERSION, PLURAL = "ringkeeper.io", "v1alpha1", "replicationrings"


class Failure(Exception):
    """A verification that cannot run: one line for the user, exit code 2."""


def _positive_int(text: str) -> int:
    n = int(text)
    if n <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return n


def _non_negative(text: str) -> float:
    x = float(text)
    if x < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {text}")
    return x


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("ring", help="the ReplicationRing (or local ring) to verify")
    p.add_argument("--table", "-t", action="append", dest="tables", metavar="TABLE",
                   help="verify only this schema.table (repeatable; default: every table "
                   "the ring replicates that has a primary key)")
    p.add_argument("--full", action="store_true",
                   help="hash every row (default: incremental, only keys changed since the "
                   "last passing run)")
    p.add_argument("--repair", action="store_true",
                   help="after finding differences, show the repair plan and apply it when "
                   "confirmed (--yes, or y at the prompt)")
    p.add_argument("--source", metavar="MEMBER",
                   help="with --repair: this member's rows win (default: the ring's "
                   "conflict policy decides)")
    p.add_argument("--yes", "-y", action="store_true",
                   help="with --repair: apply the plan without asking")
    p.add_argument("--ring-file", metavar="FILE",
                   help="read members from this ring config JSON instead of the cluster")
    p.add_argument("-n", "--namespace",
                   help="the ring's namespace (default: the kubeconfig context's)")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or "
                   "~/.kube/config)")
    p.add_argument("--report", metavar="PATH",
                   help="JSON report path; the text report goes next to it as .txt "
                   "(default: ./ringkeeper-verify-<ring>-<UTC timestamp>.json)")
    p.add_argument("--chunk-rows", type=_positive_int, default=100_000, metavar="N",
                   help="rows per checksum chunk (default 100000)")
    p.add_argument("--settle-seconds", type=_non_negative, default=5.0, metavar="S",
                   help="a difference must stay unchanged this long to count, so "
                   "replication lag is not reported (default 5)")


# --------------------------------------------------------------------------------------
# Kubernetes


class RingStatus:
    """`status.lastVerification` of the ReplicationRing, by merge patch on /status.
    Failures to patch are reported once and never fail the verification."""

    def __init__(self, api: Any, namespace: str, ring: str, redact: Redactor) -> None:
        self.api = api
        self.namespace, self.ring, self.redact = namespace, ring, redact
        self.warned = False
        self.pending: asyncio.Task[None] | None = None
        self.last = 0.0

    async def patch(self, status: dict[str, object]) -> None:
        from ..api.v1alpha1.ring import VerificationStatus

        cleared: dict[str, object] = {
            (f.alias or name): None for name, f in VerificationStatus.model_fields.items()}
        from ..adapters.resources import patch_custom_status

        try:
            # lastVerification alone: no conditions, so no resourceVersion is needed
            await asyncio.wait_for(patch_custom_status(
                self.api, self.namespace, PLURAL, self.ring,
                {"lastVerification": {**cleared, **status}}), 15)
        except Exception as exc:  # the status is a courtesy; the report is the result
            if not self.warned:
                self.warned = True
                reason = getattr(exc, "reason", None) or exc
                print(self.redact(f"{PROG}: warning: cannot update the status of "
                                  f"replicationring {self.namespace}/{self.ring}: {reason}"),
                      file=sys.stderr)

    def progress(self, status: dict[str, object], every: float = 10.0) -> None:
        """From the (synchronous) progress callback: a patch at most every `every` s."""
        now = time.monotonic()
        if now - self.last < every or (self.pending is not None and not self.pending.done()):
            return
        self.last = now
        self.pending = asyncio.get_running_loop().create_task(self.patch(status))

    async def settle(self) -> None:
        if self.pending is not None:
            await asyncio.gather(self.pending, return_exceptions=True)


async def _from_cluster(args: argparse.Namespace, redact: Redactor
                        ) -> tuple[RingConfig, Any, str]:
    from kubernetes_asyncio.client.exceptions import ApiException

    from ..adapters.kube import api_client, default_namespace
    from ..adapters.ringsecret import read_ring_config

    try:
        api = await api_client(args.kubeconfig)
    except RuntimeError as exc:
        raise Failure(f"{exc} (or give --ring-file for a local ring)") from None
    ns = args.namespace or default_namespace(args.kubeconfig)
    name = f"{args.ring}-sync"
    try:
        cfg = await read_ring_config(api, ns, name, 15)
    except ApiException as exc:
        await api.close()
        if exc.status == 404:
            raise Failure(f"no ring config Secret {ns}/{name}: is ReplicationRing "
                          f"{args.ring} in namespace {ns} (try -n) and reconciled?") from None
        raise Failure(f"cannot read Secret {ns}/{name}: {exc.status} {exc.reason}") from None
    except (TimeoutError, OSError) as exc:
        await api.close()
        raise Failure(f"cannot reach the Kubernetes API: {exc or 'timed out'}") from None
    except (KeyError, ValueError) as exc:
        await api.close()
        raise Failure(redact(f"Secret {ns}/{name} holds no usable ring.json: {exc}")) from None
    return cfg, api, ns


# --------------------------------------------------------------------------------------
# The command


@dataclass
class Run:
    args: argparse.Namespace
    redact: Redactor
    status: RingStatus | None = None
    mode: Mode = "incremental"
    started: datetime = field(default_factory=lambda: datetime.now(UTC))

    def say(self, text: str, *, err: bool = False) -> None:
        print(self.redact(text), file=sys.stderr if err else sys.stdout, flush=True)

    async def set_status(self, report: Report | None, *, completed: bool,
                         report_path: str | None = None, error: bool = False,
                         clean_after_repair: bool = False) -> None:
        if self.status is None:
            return
        st = verification_status(report, mode=self.mode, started_at=self.started,
                                 completed_at=datetime.now(UTC) if completed else None,
                                 report_path=report_path, error=error)
        if clean_after_repair:
            st.update(result="Passed", differences=0)
        await self.status.settle()
        await self.status.patch(st)


async def _verify(run: Run, cfg: RingConfig, members: list[MemberConn]) -> int:
    args = run.args
    names = [m.name for m in members]
    tables: list[str]
    skipped: dict[str, str] = {}
    if args.tables:
        tables = list(args.tables)
    else:
        tables, skipped = await ring_tables(cfg, members)
    run.say(f"verifying ring {cfg.ring} ({run.mode}): members {', '.join(names)}; "
            f"{len(tables)} table(s)", err=True)
    await run.set_status(None, completed=False)
    bar = ProgressBar(sys.stderr, tables)

    def progress(p: Progress) -> None:
        bar(p)
        if run.status is not None:
            run.status.progress(verification_status(
                None, mode=run.mode, started_at=run.started, completed_at=None,
                report_path=None, progress_percent=100 * bar.fraction))

    try:
        report = await verify(members, tables, mode=run.mode, chunk_rows=args.chunk_rows,
                              settle_seconds=args.settle_seconds, progress=progress)
    finally:
        bar.done()
    report.skipped.update(skipped)
    if cfg.satellites:
        report.satellites = await _satellites(run, cfg)
    path = Path(args.report) if args.report else Path.cwd() / report_name(cfg.ring,
                                                                          run.started)
    try:
        jp, tp = write_report(report, path)
    except OSError as exc:
        raise Failure(f"cannot write the report to {path}: {exc}") from None
    run.say(clip(render_text(report), str(tp)))
    run.say(f"report: {jp}\n        {tp}")
    await run.set_status(report, completed=True, report_path=str(jp))
    if report.passed:
        return _satellites_outcome(run, report)
    unsettled = sum(len(t.unsettled) for t in report.tables)
    if not args.repair:
        run.say(f"{len(report.differences)} differing key(s)"
                + (f", {unsettled} still changing" if unsettled else "")
                + f"; to repair: {PROG} {cfg.ring} --repair [--source MEMBER] "
                "(shows the plan first)", err=True)
        _satellites_outcome(run, report)
        return 1
    code = await _repair(run, cfg, members, report, jp, unsettled)
    sat_code = _satellites_outcome(run, report)
    return code if code != 0 else sat_code


async def _satellites(run: Run, cfg: RingConfig) -> list[SatelliteVerification]:
    """Each satellite against its parent's rows that match its filter (always in full;
    never written to). Messages are redacted before they reach the report files."""
    labels = [t for s in cfg.satellites for t in s.table_names]
    run.say(f"verifying {len(cfg.satellites)} satellite(s) against their parents: "
            + ", ".join(f"{s.parent} vs {s.name}" for s in cfg.satellites), err=True)
    bar = ProgressBar(sys.stderr, labels)
    try:
        sats = await verify_satellites(cfg, run.args.tables, chunk_rows=run.args.chunk_rows,
                                       settle_seconds=run.args.settle_seconds, progress=bar)
    finally:
        bar.done()
    for s in sats:
        s.message = run.redact(s.message)
        for t in s.tables:
            t.error = None if t.error is None else run.redact(t.error)
    return sats


def _satellites_outcome(run: Run, report: Report) -> int:
    """What the satellites section adds to the exit code, said once on stderr."""
    code = satellites_exit_code(report.satellites)
    if code == 1:
        n = len(report.satellite_differences)
        run.say(f"satellites differ from their parents ({n} differing key(s)); "
                f"{PROG} --repair does not repair satellites", err=True)
    elif code == 2:
        run.say("a satellite could not be compared with its parent (see the report); "
                "it is not counted as equal", err=True)
    return code


def _save(result: RepairResult, path: Path) -> None:
    try:
        path.write_text(result.model_dump_json(indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise Failure(f"cannot write {path}: {exc}") from None


async def _repair(run: Run, cfg: RingConfig, members: list[MemberConn], report: Report,
                  report_json: Path, unsettled: int) -> int:
    args = run.args
    report_path = str(report_json)
    plan_path = report_json.with_name(report_json.stem + ".repair-plan.json")
    done_path = report_json.with_name(report_json.stem + ".repair.json")
    if not report.differences:
        run.say(f"nothing to repair: {unsettled} key(s) were still changing when rechecks "
                "timed out; run the verification again", err=True)
        return 1
    kw: dict[str, Any] = {"source": args.source, "policy": cfg.policy.value}
    plan = await repair(report, members, dry_run=True, **kw)
    _save(plan, plan_path)
    run.say(f"repair plan (dry run, also in {plan_path}):")
    run.say(clip(plan.render_text(), str(plan_path)))
    if plan.fixes:
        if not await _confirm(args, len(plan.fixes)):
            run.say("repair not applied; re-run with --repair --yes to apply it", err=True)
            return 1
        done: RepairResult = await repair(report, members, dry_run=False, **kw)
        _save(done, done_path)
        run.say(clip(done.render_text(), str(done_path)))
    # Re-read every key the report named: a dry run plans nothing once all agree.
    check = await repair(report, members, dry_run=True, **kw)
    keys = len(report.differences)
    if check.fixes:
        left = sorted({f"{f.table} [{','.join(f.key)}]" for f in check.fixes})
        shown = ", ".join(left[:20]) + (f", ... ({len(left) - 20} more)" if len(left) > 20
                                        else "")
        run.say(f"re-verified {keys} key(s): {len(left)} still differ: {shown}")
        return 1
    run.say(f"re-verified {keys} repaired key(s): equal at every member "
            f"({', '.join(m.name for m in members)})")
    if unsettled or any(t.truncated for t in report.tables):
        run.say("other keys were not verified (still changing or past the key limit): "
                "run the verification again", err=True)
        return 1
    await run.set_status(report, completed=True, report_path=report_path,
                         clean_after_repair=True)
    return 0


async def _confirm(args: argparse.Namespace, fixes: int) -> bool:
    if args.yes:
        return True
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return False
    answer = await asyncio.to_thread(input, f"apply {fixes} fix(es)? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


async def _main(args: argparse.Namespace, redact: Redactor) -> int:
    if args.source is not None and not args.repair:
        raise Failure("--source only applies with --repair")
    run = Run(args, redact, mode="full" if args.full else "incremental")
    api: Any = None
    if args.ring_file:
        try:
            cfg = RingConfig.load(Path(args.ring_file))
        except ValueError as exc:
            raise Failure(str(exc)) from None
        if cfg.ring != args.ring:
            raise Failure(f"{args.ring_file} describes ring {cfg.ring}, not {args.ring}")
    else:
        cfg, api, ns = await _from_cluster(args, redact)
    for m in cfg.members:
        redact.add_dsn(m.dsn)
    for sat in cfg.satellites:
        redact.add_dsn(sat.dsn)
    try:
        if args.source is not None and args.source not in cfg.names:
            raise Failure(f"--source {args.source}: not a member of ring {cfg.ring} "
                          f"(members: {', '.join(cfg.names)})")
        if api is not None:
            run.status = RingStatus(api, ns, args.ring, redact)
        try:
            return await _verify(run, cfg, members_of(cfg))
        except (VerifyError, Failure, OSError, asyncpg.PostgresError,
                asyncpg.InterfaceError) as exc:
            await run.set_status(None, completed=True, error=True)
            raise Failure(str(exc) or type(exc).__name__) from None
    finally:
        if api is not None:
            await api.close()


def run(args: argparse.Namespace) -> int:
    redact = Redactor()
    try:
        return asyncio.run(_main(args, redact))
    except (Failure, VerifyError) as exc:
        print(redact(f"{PROG}: {exc}"), file=sys.stderr)
        return 2
