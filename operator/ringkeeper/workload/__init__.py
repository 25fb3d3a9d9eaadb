"""Workloads that write like a hospital and prove nothing acknowledged was lost.

`ringkeeper workload lis` (cli.py) and the tests use the same pieces: the laboratory schema
(schema.py) with keys no two campuses can share (keys.py), a paced generator per site
(generator.py, flow.py) and the ledger of acknowledged commits (ledger.py) with its check
against the members (check.py). See docs/workload.md.
"""

from .check import CheckReport, LedgerProblem, check
from .flow import Mix
from .generator import HOSPITAL_DAY_RESULTS, HOSPITAL_DAY_SPECIMENS, LoadPlan, SiteTarget, plan, run
from .keys import barcode, compose, decompose
from .ledger import ChangeKind, Entry, Ledger

__all__ = [
           "HOSPITAL_DAY_RESULTS",
           "HOSPITAL_DAY_SPECIMENS",
           "ChangeKind",
           "CheckReport",
           "Entry",
           "Ledger",
           "LedgerProblem",
           "LoadPlan",
           "Mix",
           "SiteTarget",
           "barcode",
           "check",
           "compose",
           "decompose",
           "plan",
           "run",
]
