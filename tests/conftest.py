"""Shared test set-up: repository paths and example loading."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

import procguard

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


_GUARD = procguard.Guard()


def pytest_configure(config: pytest.Config) -> None:
    _GUARD.install()


def _tier(item: pytest.Item) -> int:
    path = str(item.fspath)
    return 0 if "/unit/" in path else 2 if "/e2e/" in path else 1


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the tiers in order unit, integration, e2e (stable within each). The local
    cluster is a session fixture: started by the first e2e test, it lives to the end of
    the run, so with e2e first its API server, etcd and controllers (about half a core)
    loaded the machine through every integration test's timing as well."""
    items.sort(key=_tier)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop whatever this run started and did not stop (an interrupted run, a leaky test)."""
    stopped = _GUARD.reap()
    if stopped:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        line = f"procguard: stopped {len(stopped)} process(es) the run left behind: {stopped}"
        if reporter is not None:
            reporter.write_line(line)
        else:
            print(line)


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def expected_error(path: Path) -> str:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# expect: "), f"{path} must start with '# expect: <message>'"
    return first.removeprefix("# expect: ").strip()


def valid_example_files() -> list[Path]:
    return sorted(p for p in EXAMPLES.rglob("*.yaml") if "invalid" not in p.parts)


def invalid_example_files() -> list[Path]:
    return sorted((EXAMPLES / "invalid").glob("*.yaml"))
