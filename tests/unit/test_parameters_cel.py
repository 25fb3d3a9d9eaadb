"""The Campus CRD's CEL rules for spec.parameters, run by the API server's own code.

hack/celcheck wraps the apiextensions-apiserver validation (CRD validation with the CEL cost
limits, defaulting, OpenAPI schema, CEL rules). It is built offline from the Go module
cache that hack/k8s-tools fills; without Go or that cache these tests skip and say why.
They show that admission refuses exactly what `ringkeeper validate` refuses, with the same
sentence, for the table cases and for random and hostile maps.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_parameters import HOSPITAL_TUNING, campus
from test_parameters_props import PARAM_MAPS, PROFILES

import celtool
from ringkeeper.api import crdgen
from ringkeeper.api.v1alpha1 import BY_KIND
from ringkeeper.api.validation import validate
from ringkeeper.engines import EngineProfile


@pytest.fixture(scope="module")
def celcheck(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("celcheck")
    binary = celtool.binary(out)
    crd = out / "campus.yaml"
    crd.write_text(crdgen.render(BY_KIND["Campus"]), encoding="utf-8")
    return binary, crd


def _admission(tool: tuple[Path, Path], docs: list[dict[str, Any]]) -> list[list[str]]:
    binary, crd = tool
    lines = "".join(json.dumps(d) + "\n" for d in docs)
    res = subprocess.run([str(binary), str(crd)], input=lines, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    # "\n" only: str.splitlines() also splits at U+0085 and U+2028, which Go's JSON
    # encoder leaves raw inside strings (a hostile name with NEL broke a line in two).
    out = [json.loads(line) for line in res.stdout.split("\n") if line]
    assert len(out) == len(docs)
    return out


def test_the_api_server_accepts_the_crd_within_its_cel_cost_limits(
        celcheck: tuple[Path, Path]) -> None:
    assert _admission(celcheck, [campus(HOSPITAL_TUNING)]) == [[]]


def test_the_tool_sees_a_refusal(celcheck: tuple[Path, Path]) -> None:
    (errors,) = _admission(celcheck, [campus({"ARCHIVE_COMMAND": "sh"})])
    assert errors == ["[].spec.parameters: Forbidden: parameters may not set archive_command: "
                      "it runs a shell command as the database user"]


TABLE: list[dict[str, str]] = [
    {"ARCHIVE_COMMAND": "x"}, {"Restore_Command": "x"}, {"archive_cleanup_command": "x"},
    {"shared_preload_libraries": "x"}, {"include": "/etc/passwd"}, {"Include_If_Exists": "x"},
    {"work_mem\narchive_mode": "on"}, {"": "on"}, {"no_such_setting": "1"},
    {"max_connections": "100000"}, {"log_statement": "everything"}, {"jit": "maybe"},
    {"JIT": "Off"}, {"work_mem": "100000B"}, {"work_mem": "64mb"}, {"shared_buffers": "1TB"},
    {"checkpoint_timeout": "1500ms"}, {"checkpoint_timeout": "1d"},
    {"checkpoint_completion_target": "0.95"}, {"checkpoint_completion_target": "1.01"},
    {"vacuum_cost_delay": "2ms"}, {"vacuum_cost_delay": "0.1s"}, {"vacuum_cost_delay": "1s"},
    {"log_line_prefix": "%m\nx"}, {"log_line_prefix": "%m' x"}, {"timezone": "Asia/Shanghai"},
    {"DateStyle": "iso, dmy"}, {"work_mem": "1MB", "WORK_MEM": "2MB"}, {"port": "5433"},
    {"transaction_timeout": "1min"}, {"wal_keep_size": "256MB"}, {"wal_keep_size": "1GB"},
    {"log_min_duration_statement": "-1"}, {"log_min_duration_statement": "-2"},
    {"default_transaction_isolation": "READ COMMITTED"}, HOSPITAL_TUNING,
    # Line separators other than "\n" in names and values (found by the property test:
    # U+0085 reached the tool's output raw and split a result line in two).
    {"work_mem\x85": "1MB"}, {"log_line_prefix": "%m\x85\u2028\u2029"},
    {"work_mem\x85": "x" * 2000}, {"a\u2028b": "x" * 2000},
]


@pytest.mark.parametrize("version", ["15", "17"])
def test_admission_matches_validate_on_the_table(celcheck: tuple[Path, Path],
                                                 version: str) -> None:
    docs = [campus(params, version=version) for params in TABLE]
    docs += [campus(params, "kingbase", "V8R6") for params in TABLE]
    for doc, errors in zip(docs, _admission(celcheck, docs), strict=True):
        _same_answer(doc, errors)


def _same_answer(doc: dict[str, Any], errors: list[str]) -> None:
    problems = validate(doc)
    params = doc["spec"]["parameters"]
    assert (problems == []) == (errors == []), (params, problems, errors)
    if len(params) == 1 and problems and problems[0].path == "spec.parameters":
        assert any(problems[0].message in e for e in errors), (params, problems, errors)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.data_too_large])
@given(batch=st.lists(st.tuples(st.sampled_from(PROFILES), PARAM_MAPS),
                      min_size=30, max_size=30))
def test_admission_matches_validate_on_hostile_maps(
        celcheck: tuple[Path, Path], batch: list[tuple[EngineProfile, dict[str, str]]]) -> None:
    docs = [campus(params, p.engine, p.version) for p, params in batch]
    for doc, errors in zip(docs, _admission(celcheck, docs), strict=True):
        _same_answer(doc, errors)


_OVER_BUDGET = ("budget", "cost limit", "evaluation error")


def test_largest_maps_stay_within_the_runtime_cost_budget(celcheck: tuple[Path, Path]) -> None:
    """100 entries (the most the schema allows) with 1 KB values or 63-character names:
    every rule still runs to a verdict; none runs out of the API server's CEL budget."""
    from ringkeeper.engines import profile_for

    names = [p.name for p in profile_for("postgresql", "18").parameters.params][:100]
    docs = [campus({n.upper(): "1" * 1024 for n in names}, version="18"),
            campus({"A" * 41 + f"{i:022d}": "x" * 1024 for i in range(100)}),
            campus({n: "on" for n in names}, version="18")]
    for doc, errors in zip(docs, _admission(celcheck, docs), strict=True):
        assert errors, doc["spec"]["parameters"]
        assert not any(w in e for e in errors for w in _OVER_BUDGET), errors
        _same_answer(doc, errors)
