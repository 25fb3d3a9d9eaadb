"""Which Secrets a ReplicationRing may use: referenced, never harvested.

A ring's author names Secrets (an external member's password and CA); the operator
reads them with its own, much wider, rights and sends the password to the host the
author chose. Without a rule any Secret in the namespace - a Campus's superuser
password above all - could be sent anywhere. So a Secret is usable by a ring only when
whoever may write Secrets said so, with the label `ringkeeper.io/ring: <ring>`, and
never when the operator made it (its credentials and ring configs). The decision is
taken on the Secret's metadata alone, before its value is read. Pure functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from .conditions import set_condition
from .manifests import SECRET_KEYS, ring_secret_name, secret_name

RING_LABEL = "ringkeeper.io/ring"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
CAMPUS_LABEL = "ringkeeper.io/campus"
# Suffixes of the Secrets the operator generates for every Campus (<campus>-superuser,
# ...-replication, ...-agent, ...-ring); -app is generic, so only the ring's own
# campuses' <campus>-app is refused by name.
_GENERATED_SUFFIXES = (*(f"-{kind}" for kind in SECRET_KEYS if kind != "app"), "-ring")


class SecretVerdict(StrEnum):
    USABLE = "Usable"
    NOT_LABELLED = "SecretNotLabelled"
    GENERATED = "SecretGeneratedByOperator"
    MISSING = "SecretNotFound"


@dataclass(frozen=True)
class SecretUse:
    verdict: SecretVerdict
    secret: str
    message: str

    @property
    def usable(self) -> bool:
        return self.verdict == SecretVerdict.USABLE


def ring_sync_secret_name(ring: str) -> str:
    """The ring configuration the operator writes for the ring as a whole."""
    return f"{ring}-sync"


def generated_names(ring: str, campuses: Iterable[str]) -> frozenset[str]:
    """Every Secret name the operator writes for this ring and its campuses."""
    names = {ring_sync_secret_name(ring)}
    for c in campuses:
        names |= {secret_name(c, kind) for kind in SECRET_KEYS}
        names.add(ring_secret_name(c))
    return frozenset(names)


def _generated_by_operator(name: str, meta: Mapping[str, Any],
                           generated: frozenset[str]) -> bool:
    labels = meta.get("labels") or {}
    owners = meta.get("ownerReferences") or []
    return (name in generated or name.endswith(_GENERATED_SUFFIXES)
            or labels.get(MANAGED_BY_LABEL) == "ringkeeper" or CAMPUS_LABEL in labels
            or any(str(o.get("apiVersion", "")).split("/")[0] == "ringkeeper.io"
                   for o in owners))


def may_use(ring: str, name: str, meta: Mapping[str, Any] | None,
            generated: frozenset[str] = frozenset()) -> SecretUse:
    """May ring `ring` read Secret `name` (metadata `meta`, None when it does not exist)?

    `generated`: the operator's own Secret names for this ring (generated_names)."""
    if meta is None:
        return SecretUse(SecretVerdict.MISSING, name,
                         f"Secret {name} does not exist in the ring's namespace")
    if _generated_by_operator(name, meta, generated):
        return SecretUse(SecretVerdict.GENERATED, name,
                         f"Secret {name} is one the operator generates (credentials or ring "
                         "configuration); a ring never sends it anywhere: create a Secret "
                         "of its own for this member")
    labels = meta.get("labels") or {}
    if labels.get(RING_LABEL) != ring:
        return SecretUse(SecretVerdict.NOT_LABELLED, name,
                         f"Secret {name} is not labelled for ring {ring}: if this ring may "
                         f"send it to the member, add the label {RING_LABEL}={ring} "
                         f"(kubectl label secret {name} {RING_LABEL}={ring})")
    return SecretUse(SecretVerdict.USABLE, name, f"Secret {name} is labelled for ring {ring}")


def refusal_conditions(conditions: Sequence[Mapping[str, Any]], refused: Sequence[SecretUse],
                       now: datetime, generation: int | None) -> list[dict[str, Any]]:
    """Ready=False with the first refusal's reason and every refusal's sentence; the
    conditions unchanged when nothing was refused."""
    out = [dict(c) for c in conditions]
    if not refused:
        return out
    return set_condition(out, type="Ready", status="False", reason=str(refused[0].verdict),
                         message="; ".join(r.message for r in refused)[:1000], now=now,
                         generation=generation)
