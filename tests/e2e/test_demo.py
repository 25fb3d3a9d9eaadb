"""`make demo` end to end at a reduced size (issue 18): hack/demo.sh runs its whole flow
on the test session's local cluster (no second cluster: RINGKEEPER_DEV_STATE points the
demo's `up` at the running one, which it leaves alone), with the size knobs turned down
and the preparation step skipped (`make test` ran it). It must exit 0 and end with the
summary read back from the cluster: per campus its primary, RTO and lost commits, per
ring link its state and lag, the verification's verdict, and the result line.

What the summary judges (a failed drill, a lost or unmeasured commit, a link not
streaming, a failed or missing verification) is unit-tested apart
(tests/unit/test_demo_summary.py), each shown to fail.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO
from e2e.conftest import Cluster

pytestmark = pytest.mark.cluster
BUDGET = 600  # seconds; about 5 minutes on the shared 2-core machine


def _cleanup(cluster: Cluster) -> None:
    """The demo installs a cluster-wide operator and two namespaces: gone before the
    session's next test installs its own operator."""
    cluster.helm("uninstall", "ringkeeper", "-n", "ringkeeper-system", "--wait", check=False)
    for ns in ("demo", "lis", "ringkeeper-system"):
        cluster.kubectl("delete", "namespace", ns, "--ignore-not-found", "--wait=false",
                        check=False)


def test_demo_runs_end_to_end_and_prints_its_summary(cluster: Cluster,
                                                     tmp_path: Path) -> None:
    env = {**cluster.env(), "RINGKEEPER_DEMO_SETUP": "0",
           "RINGKEEPER_DEMO_KILL_SECONDS": "12", "RINGKEEPER_DEMO_SPLIT_SECONDS": "12",
           "RINGKEEPER_DEMO_RING_SECONDS": "10", "RINGKEEPER_DEMO_OUT": str(tmp_path)}
    t0 = time.monotonic()
    try:
        res = subprocess.run([str(REPO / "hack/demo.sh")], capture_output=True, text=True,
                             env=env, timeout=BUDGET, cwd=REPO)
    finally:
        _cleanup(cluster)
    took = time.monotonic() - t0
    out = res.stdout
    print(out[-6000:], res.stderr[-3000:], f"demo took {took:.0f} s", sep="\n")
    assert res.returncode == 0, res.stderr[-3000:]
    summary = out[out.index("Ringkeeper demo summary"):]
    rows = re.findall(r"^  (\S+)\s+(demo|lis)\s+(\S+)\s+\S+ \(\w+\)\s+(\w+)\s+([\d.]+) s\s+"
                      r"(\d+) of (\d+)$", summary, re.M)
    # the single campus (removed to make room for the ring) and the four ring campuses
    assert len(rows) == 5 and ("zhaohui", "demo") in {r[:2] for r in rows}, summary
    for campus, ns, primary, result, rto, lost, acked in rows:
        assert result == "Passed" and int(lost) == 0 and int(acked) > 0, (campus, ns)
        assert 0 <= float(rto) <= 60, (campus, ns, rto)
        assert primary == "(removed)" if ns == "demo" else primary.startswith(campus)
    links = re.findall(r"^    (\S+ -> \S+)\s+(\w+)\s+(\S+ s|-), (\S+) B$", summary, re.M)
    assert len(links) >= 4 and all(state == "Streaming" for _, state, _, _ in links), summary
    assert re.search(r"verification: Passed: [1-9]\d* table\(s\) compared at 4 members",
                     summary), summary
    assert "result: OK" in summary
    for name in ("ringkeeper-demo-kill.svg", "ringkeeper-demo-split.svg",
                 "ringkeeper-demo-verify.json"):
        assert (tmp_path / name).is_file(), name
    assert took < BUDGET
