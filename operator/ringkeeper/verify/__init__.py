"""Data verification between ring members: chunked checksums, bisection, repair.

The API the CLI and the operator call:

    report = await verify(members, tables=None, mode="full" | "incremental", ...)
    write_report(report, "verify.json")            # + verify.txt
    result = await repair(report, members, source=None | "member", dry_run=True)
"""

from ..core.names import origin_name
from ..core.verify import KeyDifference, MemberConn, RowVersion
from ..core.verify_repair import Fix
from ..core.verify_report import Progress, Report, TableReport
from .members import VerifyError
from .repair import RepairResult, repair
from .report import load_report, write_report
from .runner import verify

__all__ = [
    "Fix",
    "KeyDifference",
    "MemberConn",
    "Progress",
    "RepairResult",
    "Report",
    "RowVersion",
    "TableReport",
    "VerifyError",
    "load_report",
    "origin_name",
    "repair",
    "verify",
    "write_report",
]
