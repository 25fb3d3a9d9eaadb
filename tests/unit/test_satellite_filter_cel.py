"""Satellite row filters at admission, run by the API server's own code (hack/celcheck):
the Satellite CRD passes the CEL cost limits with the filter rules, and admission accepts
and refuses exactly the filters the Python model does (tables of test_satellite_filter),
with the rules' own sentences. Skips, saying why, without Go or its module cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from test_ring_host_cel import admission
from test_satellite_filter import REFUSED, RENDERED

import celtool
from ringkeeper.api import crdgen
from ringkeeper.api.v1alpha1 import BY_KIND
from ringkeeper.api.v1alpha1.satellite import FILTER_TERMS_MAX, RowFilter


@pytest.fixture(scope="module")
def celcheck(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("celcheck")
    binary = celtool.binary(out)
    crd = out / "satellite.yaml"
    crd.write_text(crdgen.render(BY_KIND["Satellite"]), encoding="utf-8")
    return binary, crd


def satellite(*terms: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "ringkeeper.io/v1alpha1", "kind": "Satellite",
            "metadata": {"name": "xindeng"},
            "spec": {"parentRef": {"name": "fuyang"}, "version": "17",
                     "tables": [{"name": "lis.samples", "filter": {"all": list(terms)}}]}}


def python_accepts(terms: list[dict[str, Any]]) -> bool:
    try:
        RowFilter.model_validate({"all": terms})
    except ValidationError:
        return False
    return True


# Unknown fields are the API server's pruning/strict-field step, not schema validation:
# hack/celcheck does not run it (tests/hostile covers it through kubectl).
CASES = [[t] for t, _ in RENDERED] + [[t] for t, _ in REFUSED if "sql" not in t] + [
    [],
    [{"column": "a", "op": "IsNull"}] * FILTER_TERMS_MAX,
    [{"column": "a", "op": "IsNull"}] * (FILTER_TERMS_MAX + 1),
]


def test_admission_agrees_with_the_model(celcheck: tuple[Path, Path]) -> None:
    results = admission(celcheck, [satellite(*terms) for terms in CASES])
    for terms, errors in zip(CASES, results, strict=True):
        assert (errors == []) == python_accepts(terms), (terms, errors)


@pytest.mark.parametrize(("term", "sentence"), [
    ({"column": "a", "op": "Equals", "values": ["1", "2"]},
     "Equals and NotEquals take exactly one value"),
    ({"column": "a", "op": "NotIn"}, "In and NotIn take at least one value"),
    ({"column": "a", "op": "IsNotNull", "values": [""]}, "IsNull and IsNotNull take no values"),
    ({"column": "a", "op": "Equals", "values": ["x\x00y"]}, "must not contain a NUL character"),
])
def test_admission_says_the_rules_sentence(celcheck: tuple[Path, Path], term: dict[str, Any],
                                           sentence: str) -> None:
    (errors,) = admission(celcheck, [satellite(term)])
    assert any(sentence in e for e in errors), errors
    with pytest.raises(ValidationError, match=sentence):
        RowFilter.model_validate({"all": [term]})
