"""Every link state the sidecar can report is one the ReplicationRing CRD accepts.

The sidecar once set a link to "Error", which the CRD's LinkState enum did not hold:
the API server refused the whole ring status patch exactly when a link failed. These
tests read the generated CRDs (what the API server enforces), not the pydantic model.
"""

from __future__ import annotations

import ast
import itertools
import typing
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from ringkeeper.api.v1alpha1.ring import LinkState
from ringkeeper.core.liveness import LinkFault, LinkObservation, judge_link
from ringkeeper.sync.linkreport import LinkReport

SYNC = REPO / "operator" / "ringkeeper" / "sync"
CRD_FILES = [REPO / "crds" / "ringkeeper.io_replicationrings.yaml",
             REPO / "charts" / "ringkeeper" / "crds" / "ringkeeper.io_replicationrings.yaml"]


def crd_link_states(path: Path) -> set[str]:
    crd = yaml.safe_load(path.read_text(encoding="utf-8"))
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    state = schema["properties"]["status"]["properties"]["links"]["items"]["properties"]["state"]
    return set(state["enum"])


def state_literals(source: str) -> set[str]:
    """String constants a module assigns to a link's `state` (`x.state = "..."`, in tuple
    assignments and conditional expressions too, and a `state: ... = "..."` field).
    SeedProgress (`progress.state`) has states of its own and is not a link."""
    found: set[str] = set()

    def strings(node: ast.AST) -> set[str]:
        return {n.value for n in ast.walk(node)
                if isinstance(n, ast.Constant) and isinstance(n.value, str)}

    def is_link_state(target: ast.AST) -> bool:
        return (isinstance(target, ast.Attribute) and target.attr == "state"
                and not (isinstance(target.value, ast.Name) and target.value.id == "progress"))

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                    for t, v in zip(target.elts, node.value.elts, strict=False):
                        if is_link_state(t):
                            found |= strings(v)
                elif is_link_state(target):
                    found |= strings(node.value)
        elif isinstance(node, ast.ClassDef) and node.name == "LinkReport":
            for item in node.body:
                if (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
                        and item.target.id == "state" and item.value is not None):
                    found |= strings(item.value)
    return found


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: p.parent.parent.name)
def test_crd_enum_is_the_link_state_enum(path: Path) -> None:
    """The CRDs were regenerated after LinkState changed."""
    assert crd_link_states(path) == {s.value for s in LinkState}


@pytest.mark.parametrize("module", sorted(p.name for p in SYNC.glob("*.py")))
def test_sync_code_sets_link_states_from_the_enum(module: str) -> None:
    """No state is spelled as a string in the sync code: each comes from LinkState, so
    a state the CRD does not know cannot be reported. (On the code before this test,
    this found "Error", which the CRD refused, besides the other literals.)"""
    literals = state_literals((SYNC / module).read_text(encoding="utf-8"))
    outside = literals - crd_link_states(CRD_FILES[0])
    assert not outside, f"{module} reports states the CRD refuses: {sorted(outside)}"
    assert not literals, f"{module} spells link states as strings: {sorted(literals)}"


def test_state_literal_scan_finds_what_it_looks_for() -> None:
    """The scan itself: it sees plain, tuple and conditional assignments and the field
    default, and leaves a seeding progress alone."""
    src = '''
class LinkReport:
    state: str = "Pending"
def f(status, lk, progress, bypassing):
    status.state = "Error"
    status.state, status.message = "NeedsReseed", "x"
    lk.state = "CatchingUp" if bypassing else "Streaming"
    progress.state = "Copying"
'''
    assert state_literals(src) == {"Pending", "Error", "NeedsReseed", "CatchingUp",
                                   "Streaming"}


def test_link_status_state_is_typed_with_the_enum() -> None:
    assert typing.get_type_hints(LinkReport)["state"] is LinkState


def test_every_verdict_is_a_crd_state() -> None:
    """Whatever the liveness decision sees, its state is one the CRD accepts."""
    allowed = crd_link_states(CRD_FILES[0])
    seen: set[str] = set()
    for running, silence, idle, catching, fault in itertools.product(
            (True, False), (0.0, 0.6, 1.0, 5.0), (True, False), (True, False),
            (None, *LinkFault)):
        v = judge_link(LinkObservation(running=running, silence=silence, idle=idle,
                                       commit_lag=0.5, catching_up=catching, fault=fault,
                                       since_alive=3.0), liveness=1.0)
        seen.add(str(v.state))
    assert seen <= allowed
    assert {"Streaming", "CatchingUp", "Stalled", "Down", "TargetDown", "Error",
            "NeedsReseed", "Pending"} <= seen
