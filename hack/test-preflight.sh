#!/usr/bin/env bash
# Before `make test`: the tests start a local cluster of their own (own ports, own 127.x
# addresses, own state folder). A demo cluster left running by `make demo` does not clash
# with it, but its four campuses, ring sidecars and control plane take most of a 2-core
# machine, and the tests' time limits then fail. So a running demo cluster is stopped
# first, saying so; its state is kept and `ringkeeper-dev up` starts it again.
# RINGKEEPER_TEST_KEEP_DEMO=1 keeps it running (at your own risk on a small machine).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ "${RINGKEEPER_TEST_KEEP_DEMO:-0}" == 1 ]] && exit 0
python3 - <<'PY'
import os
from pathlib import Path

from ringkeeper_devcluster import control_plane as cp

state = cp.default_state_dir()
reuse = os.environ.get("RINGKEEPER_TEST_STATE")
if reuse and Path(reuse).resolve() == state.resolve():
    raise SystemExit(0)  # the tests were asked to run on this very cluster
running = [c for c, v in cp.status(state).items() if v.startswith("running")]
if running:
    print(f"make test: the local cluster of `make demo` is running ({state}).\n"
          "  Stopping it so its databases do not compete with the tests' own cluster for CPU;\n"
          "  its data is kept: `ringkeeper-dev up` (or `make demo`) starts it again.\n"
          "  Set RINGKEEPER_TEST_KEEP_DEMO=1 to keep it running instead.")
    stopped = cp.down(state)
    print("make test: stopped " + ", ".join(stopped))
PY
