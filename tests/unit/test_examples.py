"""Examples are valid against both the models and the generated OpenAPI schemas;
every invalid example fails with the sentence its first line promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from conftest import REPO, expected_error, invalid_example_files, load_docs, valid_example_files
from ringkeeper.api import crdgen
from ringkeeper.api.v1alpha1 import BY_KIND
from ringkeeper.api.validation import validate


def _schema_for(kind: str) -> dict[str, Any]:
    return crdgen.openapi_schema(BY_KIND[kind])


def test_there_are_enough_examples() -> None:
    kinds = {d["kind"] for p in valid_example_files() for d in load_docs(p)}
    assert kinds == {"Campus", "ReplicationRing", "Satellite", "Drill"}
    assert len(invalid_example_files()) >= 5
    messages = [expected_error(p) for p in invalid_example_files()]
    assert len(set(messages)) == len(messages), "each invalid example shows a different mistake"


def test_hospital_group_has_four_campuses_with_mixed_engines() -> None:
    docs = load_docs(REPO / "examples/hospital-group/campuses.yaml")
    names = {d["spec"]["displayName"] for d in docs}
    assert {"朝晖院区", "望江山院区", "越城院区", "富阳院区"} == names
    assert {d["spec"]["engine"] for d in docs} == {"postgresql", "kingbase"}
    assert len({d["spec"]["version"] for d in docs}) == 4


@pytest.mark.parametrize("path", valid_example_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_valid_examples_pass_models_and_schema(path: Path) -> None:
    for doc in load_docs(path):
        assert validate(doc) == [], doc["metadata"]["name"]
        jsonschema.validate(doc, _schema_for(doc["kind"]))


@pytest.mark.parametrize("path", invalid_example_files(), ids=lambda p: p.name)
def test_invalid_examples_fail_with_their_message(path: Path) -> None:
    (doc,) = load_docs(path)
    problems = validate(doc)
    assert problems, f"{path.name} was accepted"
    text = "\n".join(str(p) for p in problems)
    assert expected_error(path) in text


def test_validate_cli_exit_codes() -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "ringkeeper", "validate", *map(str, valid_example_files())],
        capture_output=True, text=True, cwd=REPO,
    )
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "ringkeeper", "validate", "examples/invalid/unknown-engine.yaml"],
        capture_output=True, text=True, cwd=REPO,
    )
    assert bad.returncode == 1
    assert 'spec.engine: Unsupported value: "mysql"' in bad.stderr
