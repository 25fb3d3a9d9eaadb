"""Every hostile or careless manifest in tests/hostile/ gets from `ringkeeper validate` what
the API server gives it: refused with the message on its first line, or (`# expect: ok`)
accepted, because the operator must cope with it at run time.

tests/e2e/test_hostile_parity.py sends the same files to a real API server."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO, expected_error
from ringkeeper.cli import validate as validate_cli

HOSTILE = REPO / "tests" / "hostile"


def hostile_files() -> list[Path]:
    return sorted(HOSTILE.glob("*.yaml"))


def test_corpus_is_large_and_distinct() -> None:
    files = hostile_files()
    assert len(files) >= 50
    for path in files:
        assert expected_error(path), path.name
    refused = [expected_error(p) for p in files if expected_error(p) != "ok"]
    accepted = [p for p in files if expected_error(p) == "ok"]
    assert len(refused) >= 50 and len(accepted) >= 5


@pytest.mark.parametrize("path", hostile_files(), ids=lambda p: p.stem)
def test_validate_agrees_with_the_api_server(path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    expect = expected_error(path)
    code = validate_cli.run([str(path)])
    out, err = capsys.readouterr()
    if expect == "ok":
        assert code == 0, err
        assert out.rstrip().endswith(": valid"), out
    else:
        assert code == 1, f"{path.name} was accepted:\n{out}"
        assert expect in err, err[:3000]
