"""Every subcommand explains itself; the kubectl plugin is the same command."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO
from ringkeeper.cli import status_view
from ringkeeper.cli.main import build_parser

SUBCOMMANDS = ["operator", "agent", "sync", "crds", "validate", "status", "verify"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ringkeeper", *args],
                          capture_output=True, text=True, cwd=REPO)


def test_top_level_help_lists_every_subcommand() -> None:
    out = _run("--help")
    assert out.returncode == 0
    for name in SUBCOMMANDS:
        assert name in out.stdout


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_subcommand_help(name: str) -> None:
    out = _run(name, "--help")
    assert out.returncode == 0
    assert len(out.stdout.splitlines()) > 3


def test_kubectl_plugin_uses_its_own_name() -> None:
    assert build_parser("kubectl ringkeeper").format_usage().startswith(
        "usage: kubectl ringkeeper"
    )


def test_unknown_subcommand_is_a_clear_error() -> None:
    out = _run("promot")
    assert out.returncode == 2
    assert "invalid choice: 'promot'" in out.stderr


def test_status_tables_align_cjk_names() -> None:
    text = status_view.campuses([
        {"metadata": {"namespace": "lis", "name": "zhaohui"},
         "spec": {"displayName": "朝晖院区", "engine": "postgresql", "version": "17",
                  "instances": 3},
         "status": {"readyInstances": 3, "currentPrimary": "zhaohui-1", "phase": "Ready"}},
        {"metadata": {"namespace": "lis", "name": "yc"},
         "spec": {"displayName": "YC", "engine": "postgresql", "version": "15", "instances": 2}},
    ])
    lines = text.splitlines()
    col = [status_view._width(line[: line.index("postgresql")]) for line in lines[1:]]
    assert col[0] == col[1], "the ENGINE column starts at the same screen column"
    assert "3/3" in lines[1] and "0/2" in lines[2]
