"""The checked-in CRDs are exactly what the models generate."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from ringkeeper.api import crdgen
from ringkeeper.api.v1alpha1 import RESOURCES


@pytest.mark.parametrize("folder", ["crds", "charts/ringkeeper/crds"])
def test_checked_in_crds_match_models(folder: str) -> None:
    assert crdgen.drift(REPO / folder) == [], "run `make crds` and commit the result"


def test_cli_reproduces_crds_byte_for_byte(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "ringkeeper", "crds", "--output", str(tmp_path)],
        check=True, capture_output=True, cwd=REPO,
    )
    for path in sorted((REPO / "crds").glob("*.yaml")):
        assert (tmp_path / path.name).read_bytes() == path.read_bytes()


def test_cli_check_reports_drift(tmp_path: Path) -> None:
    crdgen.write(tmp_path)
    target = tmp_path / "ringkeeper.io_campuses.yaml"
    target.write_text(target.read_text() + "# hand edit\n")
    result = subprocess.run(
        [sys.executable, "-m", "ringkeeper", "crds", "--check", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO,
    )
    assert result.returncode == 1
    assert "ringkeeper.io_campuses.yaml: differs from the models" in result.stderr


def _walk(node: object, path: str = "") -> list[tuple[str, dict[str, object]]]:
    out: list[tuple[str, dict[str, object]]] = []
    if isinstance(node, dict):
        out.append((path, node))
        for key, sub in node.items():
            out += _walk(sub, f"{path}/{key}")
    elif isinstance(node, list):
        for i, sub in enumerate(node):
            out += _walk(sub, f"{path}[{i}]")
    return out


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.info.kind)
def test_schema_is_structural(resource: type) -> None:
    schema = crdgen.openapi_schema(resource)  # type: ignore[arg-type]
    for path, node in _walk(schema):
        if path.endswith("/x-kubernetes-validations") or "/default" in path:
            continue
        for banned in ("$ref", "anyOf", "allOf", "oneOf", "$defs", "title", "const"):
            assert banned not in node, f"{path} has {banned}"
        assert node.get("additionalProperties") is not False, path
        if "properties" in node and path.endswith(("/properties", "")) is False:
            pass
        if "properties" in node or "items" in node:
            assert "type" in node, f"{path} has no type"


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.info.kind)
def test_crd_metadata(resource: type) -> None:
    doc = yaml.safe_load(crdgen.render(resource))  # type: ignore[arg-type]
    version = doc["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert doc["spec"]["names"]["shortNames"]
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    assert names[-1] == "Age"


def test_campus_printer_columns() -> None:
    doc = yaml.safe_load(crdgen.render(RESOURCES[0]))
    columns = doc["spec"]["versions"][0]["additionalPrinterColumns"]
    cols = {c["name"]: c["jsonPath"] for c in columns}
    assert cols["Engine"] == ".spec.engine"
    assert cols["Instances"] == ".spec.instances"
    assert cols["Ready"] == ".status.readyInstances"
    assert cols["Primary"] == ".status.currentPrimary"
    assert cols["Phase"] == ".status.phase"


def test_engine_is_immutable_by_transition_rule() -> None:
    schema = crdgen.openapi_schema(RESOURCES[0])
    rules = schema["properties"]["spec"]["x-kubernetes-validations"]
    assert any(r["rule"] == "self.engine == oldSelf.engine" for r in rules)
