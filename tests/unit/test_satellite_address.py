"""Where the parent's sidecar reaches a satellite (core.ringplan.satellite_address): the pod
its `-rw` Service selects, by pod IP, and nothing else (the local cluster has no DNS, so
the Service's name would never resolve there)."""

from __future__ import annotations

from typing import Any

import pytest

from ringkeeper.core.ringplan import satellite_address


def _pod(name: str = "xd-0", sat: str | None = "xd", role: str | None = "primary",
         ip: str | None = "127.1.0.7", deleting: bool = False) -> dict[str, Any]:
    labels = {k: v for k, v in (("ringkeeper.io/satellite", sat),
                                ("ringkeeper.io/role", role)) if v is not None}
    meta: dict[str, Any] = {"name": name, "labels": labels}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    return {"metadata": meta, "status": {"podIP": ip} if ip else {}}


def test_the_labelled_pod_is_reached_by_its_ip() -> None:
    assert satellite_address("xd", _pod()) == "127.1.0.7"


@pytest.mark.parametrize("pod", [
    None,
    {},
    _pod(ip=None),                    # scheduled, no address yet
    _pod(role=None),                  # not (yet) what -rw selects
    _pod(role="replica"),
    _pod(sat="other"),                # another satellite's labels
    _pod(sat=None),                   # a pod that only has the name
    _pod(name="xd-1"),
    _pod(deleting=True),              # on its way out
])
def test_no_address_unless_it_is_the_rw_pod(pod: dict[str, Any] | None) -> None:
    assert satellite_address("xd", pod) is None
