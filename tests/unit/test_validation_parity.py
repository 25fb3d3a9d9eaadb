"""api.validation reads and judges manifests as kubectl and the API server do."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from ringkeeper.api.kubectl_yaml import DuplicateKeyError, load_manifests
from ringkeeper.api.validation import name_problems, parse, validate

BASE = """apiVersion: ringkeeper.io/v1alpha1
kind: Campus
metadata: {name: zhaohui}
spec:
  engine: postgresql
  version: "17"
"""


def _messages(doc: dict[str, Any]) -> str:
    return "\n".join(str(p) for p in validate(doc))


def test_duplicate_keys_are_refused_at_any_depth() -> None:
    with pytest.raises(DuplicateKeyError, match='key "instances" already set in map'):
        load_manifests(BASE + "  instances: 3\n  instances: 5\n")
    with pytest.raises(DuplicateKeyError, match="already set in map"):
        load_manifests(BASE + "  tls: {enabled: true, enabled: false}\n")
    # The plain loader would have kept the last value silently.
    assert yaml.safe_load(BASE + "  instances: 3\n  instances: 5\n")["spec"]["instances"] == 5


def test_go_yaml_booleans() -> None:
    (doc,) = load_manifests(BASE + "  tls: {enabled: n}\n  monitoring: {enabled: Y}\n")
    assert doc["spec"]["tls"]["enabled"] is False and doc["spec"]["monitoring"]["enabled"] is True
    (doc,) = load_manifests(BASE + "  displayName: yn\n")
    assert doc["spec"]["displayName"] == "yn"
    assert yaml.safe_load("a: y")["a"] == "y", "the shared SafeLoader is left alone"


@pytest.mark.parametrize("extra,message", [
    ('  tls: {enabled: "yes"}\n', 'spec.tls.enabled: Invalid value: "string": spec.tls.enabled '
     'in body must be of type boolean: "string"'),
    ('  instances: "3"\n', 'spec.instances in body must be of type integer: "string"'),
    ("  instances: 99999999999999999999\n", 'must be of type integer: "number"'),
    ("  failover: {maxPromotionLagBytes: 9223372036854775808}\n", 'integer: "number"'),
    ("  instances: 2.5\n", 'spec.instances in body must be of type integer: "number"'),
])
def test_strict_types(extra: str, message: str) -> None:
    (doc,) = load_manifests(BASE + extra)
    assert message in _messages(doc)


@pytest.mark.parametrize("extra", [
    "  failover: {maxPromotionLagBytes: 9223372036854775807}\n",
    "  instances: 3.0\n",  # kubectl sends the float 3.0 as 3
    "  instances: null\n",  # pruned, then defaulted
])
def test_accepted_like_the_api_server(extra: str) -> None:
    (doc,) = load_manifests(BASE + extra)
    assert validate(doc) == []


def test_operator_reads_server_objects_leniently() -> None:
    # Objects from the API server are already typed; parse() must not become strict.
    (doc,) = load_manifests(BASE)
    doc["status"] = {"lastFailover": {"startedAt": "2026-03-14T10:00:00Z"}}
    assert parse(doc).metadata.name == "zhaohui"


@pytest.mark.parametrize("name", ["Bad_Name", "zhaohui\n", "朝晖", "-a", "a-", "", "a" * 254])
def test_names_the_api_server_refuses(name: str) -> None:
    assert name_problems(name)


@pytest.mark.parametrize("name", ["zhaohui", "a.b", "a" * 253, "0"])
def test_names_the_api_server_admits(name: str) -> None:
    assert name_problems(name) == []


def test_trailing_newline_versions_are_refused() -> None:
    (doc,) = load_manifests(BASE.replace("postgresql", "kingbase").replace('"17"', '"V8R6\\n"'))
    assert "version must look like V8R6" in _messages(doc)
    (doc,) = load_manifests(BASE.replace("postgresql", "kingbase").replace('"17"', '"V8R6"'))
    assert validate(doc) == []


def test_unknown_version_and_kind_in_kubectl_words() -> None:
    (doc,) = load_manifests(BASE.replace("v1alpha1", "v1"))
    assert 'no matches for kind "Campus" in version "ringkeeper.io/v1"' in _messages(doc)
    (doc,) = load_manifests(BASE.replace("kind: Campus", "kind: Campuses"))
    assert 'no matches for kind "Campuses"' in _messages(doc)
