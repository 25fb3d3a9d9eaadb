"""The NetworkPolicy translation of the dev cluster's runtime: policies + pods + namespaces
-> who may open a connection to whom, and the iptables chains that enforce it.

Each table row is checked twice: against `decide` (the model) and against a small
interpreter of the rendered iptables rules, run for the new packet and for its reply, so
the rules and the model cannot drift apart."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from typing import Any

import pytest

from ringkeeper_devcluster.runtime.netpol import (
    Allow,
    Direction,
    Pod,
    decide,
    pod_from_api,
    render,
    translate,
)

NS = {"a": {"team": "a"}, "b": {"team": "b"}, "c": {}}
SERVER = Pod("a", "server", "127.16.0.2", {"role": "server"}, {"http": ("tcp", 8000)})
CLIENT = Pod("a", "client", "127.16.0.3", {"role": "client"})
OTHER = Pod("a", "other", "127.16.0.4", {"role": "other"})
B_CLIENT = Pod("b", "bclient", "127.16.0.5", {"role": "client"})
B_OTHER = Pod("b", "bother", "127.16.0.7", {"role": "other"})
C_POD = Pod("c", "cpod", "127.16.0.6", {"role": "client"}, {"dns": ("udp", 53)})
PODS = [SERVER, CLIENT, OTHER, B_CLIENT, B_OTHER, C_POD]
NODE = "127.0.0.1"
S, C, OT, BC, BO, CP = (p.ip for p in PODS)


def pol(spec: dict[str, Any], ns: str = "a", name: str = "p") -> dict[str, Any]:
    return {"metadata": {"namespace": ns, "name": name}, "spec": spec}


DENY_IN = pol({"podSelector": {}, "policyTypes": ["Ingress"]}, name="deny")
TO_SERVER = {"podSelector": {"matchLabels": {"role": "server"}}, "policyTypes": ["Ingress"]}


def allow_in(peer: dict[str, Any], ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"from": [peer]}
    if ports is not None:
        rule["ports"] = ports
    return pol({**TO_SERVER, "ingress": [rule]}, name="allow")


CLIENT_EGRESS = {"podSelector": {"matchLabels": {"role": "client"}}, "policyTypes": ["Egress"]}

# (case, policies, [(src, dst, proto, port, allowed)])
TABLE: list[tuple[str, list[dict[str, Any]], list[tuple[str, str, str, int, bool]]]] = [
    ("no policy: everything flows", [],
     [(C, S, "tcp", 8000, True), (BC, S, "tcp", 1, True), (S, NODE, "tcp", 26443, True)]),
    ("default deny ingress in a", [DENY_IN],
     [(C, S, "tcp", 8000, False), (S, C, "tcp", 8000, False), (BC, S, "tcp", 8000, False),
      (NODE, S, "tcp", 8000, True), (S, S, "tcp", 8000, True), (C, BC, "tcp", 8000, True),
      (S, NODE, "tcp", 26443, True)]),
    ("podSelector peer: same namespace only, numbered port",
     [DENY_IN, allow_in({"podSelector": {"matchLabels": {"role": "client"}}},
                        [{"port": 8000}])],
     [(C, S, "tcp", 8000, True), (C, S, "tcp", 8001, False), (C, S, "udp", 8000, False),
      (OT, S, "tcp", 8000, False), (BC, S, "tcp", 8000, False), (S, C, "tcp", 8000, False)]),
    ("namespaceSelector peer", [allow_in({"namespaceSelector": {"matchLabels": {"team": "b"}}})],
     [(BC, S, "tcp", 8000, True), (BO, S, "udp", 9, True), (C, S, "tcp", 8000, False),
      (CP, S, "tcp", 8000, False)]),
    ("namespaceSelector by the automatic name label",
     [allow_in({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "c"}}})],
     [(CP, S, "tcp", 8000, True), (BC, S, "tcp", 8000, False)]),
    ("namespaceSelector and podSelector in one peer",
     [allow_in({"namespaceSelector": {"matchLabels": {"team": "b"}},
                "podSelector": {"matchLabels": {"role": "client"}}})],
     [(BC, S, "tcp", 8000, True), (BO, S, "tcp", 8000, False), (C, S, "tcp", 8000, False)]),
    ("empty namespaceSelector: every namespace",
     [allow_in({"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "client"}}})],
     [(C, S, "tcp", 8000, True), (BC, S, "tcp", 8000, True), (CP, S, "tcp", 1, True),
      (OT, S, "tcp", 8000, False), (BO, S, "tcp", 8000, False)]),
    ("matchExpressions",
     [allow_in({"podSelector": {"matchExpressions": [
         {"key": "role", "operator": "NotIn", "values": ["client"]}]}})],
     [(OT, S, "tcp", 8000, True), (C, S, "tcp", 8000, False)]),
    ("ipBlock with an exception",
     [allow_in({"ipBlock": {"cidr": "127.16.0.0/24", "except": ["127.16.0.5/32"]}})],
     [(C, S, "tcp", 8000, True), (CP, S, "tcp", 8000, True), (BC, S, "tcp", 8000, False)]),
    ("ipBlock 0.0.0.0/0 means all of 127/8",
     [allow_in({"ipBlock": {"cidr": "0.0.0.0/0"}})], [(BC, S, "tcp", 8000, True)]),
    ("named port on the isolated pod", [allow_in({"podSelector": {}}, [{"port": "http"}])],
     [(C, S, "tcp", 8000, True), (C, S, "tcp", 8001, False)]),
    ("UDP port", [allow_in({"podSelector": {}}, [{"protocol": "UDP", "port": 53}])],
     [(C, S, "udp", 53, True), (C, S, "tcp", 53, False)]),
    ("port range", [allow_in({"podSelector": {}}, [{"port": 8000, "endPort": 8010}])],
     [(C, S, "tcp", 8005, True), (C, S, "tcp", 8010, True), (C, S, "tcp", 8011, False)]),
    ("an empty rule allows everything", [pol({**TO_SERVER, "ingress": [{}]})],
     [(BC, S, "tcp", 1, True), (CP, S, "udp", 2, True)]),
    ("two policies add up",
     [allow_in({"podSelector": {"matchLabels": {"role": "client"}}}),
      pol({**TO_SERVER, "ingress": [{"from": [{"podSelector": {
          "matchLabels": {"role": "other"}}}]}]}, name="second")],
     [(C, S, "tcp", 8000, True), (OT, S, "tcp", 8000, True), (BC, S, "tcp", 8000, False)]),
    ("egress to one namespace only",
     [pol({**CLIENT_EGRESS, "egress": [{"to": [{"namespaceSelector": {
         "matchLabels": {"team": "b"}}}]}]})],
     [(C, BC, "tcp", 8000, True), (C, BO, "tcp", 5432, True), (C, S, "tcp", 8000, False),
      (C, CP, "tcp", 8000, False), (C, NODE, "tcp", 26443, False),
      (S, CP, "tcp", 8000, True), (S, C, "tcp", 8000, True)]),
    ("egress to the API server needs an ipBlock",
     [pol({**CLIENT_EGRESS, "egress": [{"to": [{"ipBlock": {"cidr": "127.0.0.1/32"}}],
                                        "ports": [{"port": 26443}]}]})],
     [(C, NODE, "tcp", 26443, True), (C, NODE, "tcp", 80, False), (C, S, "tcp", 8000, False)]),
    ("egress named port resolves on the peer",
     [pol({**CLIENT_EGRESS, "egress": [{"ports": [{"protocol": "UDP", "port": "dns"}]}]})],
     [(C, CP, "udp", 53, True), (C, S, "udp", 53, False), (C, CP, "tcp", 53, False)]),
    ("egress field without policyTypes isolates both ways",
     [pol({"podSelector": {"matchLabels": {"role": "client"}}, "egress": []})],
     [(C, S, "tcp", 8000, False), (S, C, "tcp", 8000, False), (NODE, C, "tcp", 80, True)]),
    ("a policy in another namespace selects nothing here",
     [pol({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}, ns="c")],
     [(C, S, "tcp", 8000, True), (C, CP, "tcp", 8000, False), (CP, BC, "tcp", 1, False)]),
    ("both directions must agree",
     [DENY_IN, allow_in({"podSelector": {"matchLabels": {"role": "client"}}}),
      pol({**CLIENT_EGRESS, "egress": [{"to": [{"podSelector": {
          "matchLabels": {"role": "other"}}}]}]}, name="eg")],
     [(C, S, "tcp", 8000, False), (C, OT, "tcp", 8000, False), (OT, S, "tcp", 8000, False)]),
]


# -- a tiny interpreter of the rendered rules ---------------------------------------------
def _chains(text: str) -> dict[str, list[list[str]]]:
    out: dict[str, list[list[str]]] = {}
    for line in text.splitlines():
        if line.startswith(":"):
            out.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            parts = line.split()
            out[parts[1]].append(parts[2:])
    return out


def _matches(rule: list[str], pkt: dict[str, Any]) -> bool:
    i = 0
    while i < len(rule):
        opt = rule[i]
        if opt == "-j":
            return True
        if opt == "-m":
            i += 2
            continue
        val = rule[i + 1]
        i += 2
        if opt in ("-s", "-d"):
            addr = pkt["src" if opt == "-s" else "dst"]
            if ipaddress.ip_address(addr) not in ipaddress.ip_network(val):
                return False
        elif opt == "-p" and pkt["proto"] != val:
            return False
        elif opt in ("--dport", "--sport"):
            lo, _, hi = val.partition(":")
            n = pkt["dport" if opt == "--dport" else "sport"]
            if not int(lo) <= n <= int(hi or lo):
                return False
        elif opt in ("--ctdir", "--ctstate"):
            have = pkt["dir" if opt == "--ctdir" else "state"]
            if have not in val.split(","):
                return False
    raise AssertionError(f"rule without a target: {rule}")


def _verdict(chains: dict[str, list[list[str]]], chain: str, pkt: dict[str, Any]) -> str:
    for rule in chains[chain]:
        if _matches(rule, pkt):
            target = rule[rule.index("-j") + 1]
            if target in ("RETURN", "DROP"):
                return target
            assert target not in ("ACCEPT", "REJECT"), rule
            if _verdict(chains, target, pkt) == "DROP":
                return "DROP"
    return "RETURN"


def _rules_allow(text: str, main: str, src: str, dst: str, proto: str, port: int) -> bool:
    chains = _chains(text)
    new = {"src": src, "dst": dst, "proto": proto, "sport": 40000, "dport": port,
           "dir": "ORIGINAL", "state": "NEW"}
    reply = {"src": dst, "dst": src, "proto": proto, "sport": port, "dport": 40000,
             "dir": "REPLY", "state": "ESTABLISHED"}
    forward = _verdict(chains, main, new) == "RETURN"
    back = _verdict(chains, main, reply) == "RETURN"
    # a connection the rules let open must also get its replies back
    assert back or not forward, (src, dst, proto, port)
    return forward


@pytest.mark.parametrize(("case", "policies", "expect"), TABLE, ids=[t[0] for t in TABLE])
def test_translation_table(case: str, policies: list[dict[str, Any]],
                           expect: list[tuple[str, str, str, int, bool]]) -> None:
    model, _ = translate(policies, PODS, NS)
    text, _ = render(model, 16)
    for src, dst, proto, port, allowed in expect:
        assert decide(model, src, dst, proto, port) is allowed, (case, src, dst, proto, port)
        assert _rules_allow(text, "RKNP16", src, dst, proto, port) is allowed, \
            (case, src, dst, proto, port, text)


def test_model_is_exact_for_a_simple_allow() -> None:
    model, warnings = translate(
        [allow_in({"podSelector": {"matchLabels": {"role": "client"}}}, [{"port": 8000}])],
        PODS, NS)
    assert model == {(S, Direction.INGRESS): (Allow(f"{C}/32", "tcp", 8000),)}
    assert warnings == []


def test_an_existing_connection_is_cut_when_a_policy_denies_it() -> None:
    """Replies are judged like the original direction, not waved through as ESTABLISHED:
    a partition must also stop a replication stream opened before it."""
    model, _ = translate([DENY_IN], PODS, NS)
    chains = _chains(render(model, 16)[0])
    reply = {"src": S, "dst": C, "proto": "tcp", "sport": 8000, "dport": 40000,
             "dir": "REPLY", "state": "ESTABLISHED"}
    assert _verdict(chains, "RKNP16", reply) == "DROP"
    original = {**reply, "src": C, "dst": S, "sport": 40000, "dport": 8000, "dir": "ORIGINAL"}
    assert _verdict(chains, "RKNP16", original) == "DROP"


def test_what_cannot_be_enforced_is_reported() -> None:
    _, warnings = translate([
        allow_in({"ipBlock": {"cidr": "10.0.0.0/8"}}),
        allow_in({"podSelector": {}}, [{"protocol": "ICMP", "port": 1}]),
        pol({**TO_SERVER, "ingress": [{"from": [{"podSelector": {"matchExpressions": [
            {"key": "x", "operator": "Bogus"}]}}]}]}, name="bad"),
    ], PODS, NS)
    assert any("10.0.0.0/8" in w for w in warnings)
    assert any("ICMP" in w for w in warnings)
    assert any("a/bad is not enforced" in w and "Bogus" in w for w in warnings)


def test_stale_chains_are_flushed_and_deleted_in_the_same_transaction() -> None:
    model, _ = translate([DENY_IN], PODS, NS)
    text, chains = render(model, 16)
    assert "RKNP16-I-0.2" in chains
    after, left = render({}, 16, chains)
    assert left == {"RKNP16", "RKNP16-R"}
    assert ":RKNP16-I-0.2 - [0:0]" in after and "-X RKNP16-I-0.2" in after
    assert "ACCEPT" not in text + after  # an ACCEPT would skip the fault chains


def test_pod_from_api_skips_what_is_not_a_pod_address() -> None:
    base = {"metadata": {"namespace": "a", "name": "x", "labels": {"k": "v"}},
            "spec": {"containers": [{"ports": [{"name": "pg", "containerPort": 5432}]}]}}
    pod = pod_from_api({**base, "status": {"phase": "Running", "podIP": "127.16.0.9"}})
    assert pod == Pod("a", "x", "127.16.0.9", {"k": "v"}, {"pg": ("tcp", 5432)})
    for status in ({"phase": "Running", "podIP": "127.0.0.1"}, {"phase": "Pending"},
                   {"phase": "Succeeded", "podIP": "127.16.0.9"},
                   {"phase": "Running", "podIP": "10.0.0.1"}):
        assert pod_from_api({**base, "status": status}) is None


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("iptables-restore") is None,
                    reason="checking the syntax needs root and iptables-restore")
def test_rendered_rules_are_accepted_by_iptables_restore() -> None:
    """`--test` parses and checks the whole transaction without committing it."""
    policies = [row for _, pols, _ in TABLE for row in pols]
    model, _ = translate(policies, PODS, NS)
    text, _ = render(model, 16)
    res = subprocess.run(["iptables-restore", "-w", "--test", "--noflush"], input=text,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
