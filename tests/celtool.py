"""hack/celcheck for the tests: the API server's own CRD and CEL validation as a command.

`hack/build-k8s.sh` (run by `make setup`) builds it with the control plane into the binary
cache, where a test finds it. Otherwise it is built here from the module cache, offline.
Where neither works the tests skip, unless RINGKEEPER_REQUIRE_CLUSTER=1 (CI), where a
skip would hide that admission was never compared with `ringkeeper validate`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ringkeeper_devcluster import control_plane as cp

SOURCE = Path(__file__).resolve().parents[1] / "hack" / "celcheck"


def _unavailable(reason: str) -> None:
    if os.environ.get("RINGKEEPER_REQUIRE_CLUSTER") == "1":
        pytest.fail(f"hack/celcheck required but unavailable: {reason}")
    pytest.skip(reason)


def binary(workdir: Path) -> Path:
    built = cp.binaries_dir() / "celcheck"
    if built.exists():
        return built
    go = shutil.which("go")
    if go is None:
        _unavailable("go is not installed: cannot build hack/celcheck")
    out = workdir / "celcheck"
    res = subprocess.run([str(go), "build", "-o", str(out), "."], cwd=SOURCE,
                         env={**os.environ, "GOPROXY": "off", "GOFLAGS": "-mod=readonly"},
                         capture_output=True, text=True, timeout=1200)
    if res.returncode != 0:
        _unavailable("hack/celcheck is not built (run hack/build-k8s.sh) and cannot be built "
                     f"offline: {res.stderr[-400:]}")
    return out
