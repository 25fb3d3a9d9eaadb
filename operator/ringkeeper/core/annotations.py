"""Annotations users write on Ringkeeper objects, parsed before anything acts on them.

Annotations pass no schema: the API server admits any string. A malformed one
must therefore neither crash a control loop nor change what the loop does for
the rest of the object (a typo in ``fenced-instances`` must not stop failover of
a healthy campus). Each parser here is pure and returns either the value or the
error sentence; the caller reports the error in a condition (reason
``InvalidAnnotation``) and carries on as if the annotation were absent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from .conditions import condition, set_condition

SWITCHOVER = "ringkeeper.io/switchover-to"
FENCED = "ringkeeper.io/fenced-instances"
# Annotation values are capped by the API server at 256 KiB in total; a fenced list
# longer than this is a mistake, not a campus (at most 9 instances).
_MAX_FENCED_TEXT = 4096
_INSTANCE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")

T = TypeVar("T")


@dataclass(frozen=True)
class Parsed(Generic[T]):
    """A parsed annotation: ``value`` when ``error`` is None, else the reason it was ignored."""

    value: T
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _show(text: str, limit: int = 80) -> str:
    """The offending text, quoted and shortened, safe to put in a condition message."""
    shown = text if len(text) <= limit else text[:limit] + "..."
    return json.dumps(shown, ensure_ascii=True)


def parse_fenced(text: str | None, instances: Sequence[str]) -> Parsed[tuple[str, ...]]:
    """``ringkeeper.io/fenced-instances``: a JSON list of instance names of this campus.

    Absent or empty means nothing is fenced. Anything else that is not a JSON list
    of distinct names of this campus's instances is an error, and the value is the
    empty tuple (the caller decides whether to keep the last good list instead).
    """
    if text is None or not text.strip():
        return Parsed(())
    bad = f"{FENCED}: {_show(text)} "
    if len(text) > _MAX_FENCED_TEXT:
        return Parsed((), bad + f"is longer than {_MAX_FENCED_TEXT} characters")
    try:
        data = json.loads(text)
    except ValueError as exc:
        return Parsed((), bad + f"is not JSON ({exc.args[0] if exc.args else exc}); "
                      'write a list such as ["zhaohui-2"]')
    except RecursionError:
        # "[[[[..." about a thousand deep, well under the length cap: json raises this,
        # not ValueError, and it crashed the HA cycle of the campus every second.
        return Parsed((), bad + "nests too deeply to be a list of instance names; "
                      'write a list such as ["zhaohui-2"]')
    if not isinstance(data, list):
        return Parsed((), bad + 'is not a JSON list; write a list such as ["zhaohui-2"]')
    names: list[str] = []
    for item in data:
        if not isinstance(item, str) or not _INSTANCE.fullmatch(item):
            return Parsed((), bad + f"holds {_show(str(item), 40)}, which is not an "
                          "instance name")
        if item not in instances:
            return Parsed((), bad + f"names {item}, which is not an instance of this campus "
                          f"({', '.join(instances)})")
        if item in names:
            return Parsed((), bad + f"names {item} twice")
        names.append(item)
    return Parsed(tuple(sorted(names)))


def parse_switchover(text: str | None, instances: Sequence[str]) -> Parsed[str | None]:
    """``ringkeeper.io/switchover-to``: one instance name of this campus, or absent."""
    if text is None or not text.strip():
        return Parsed(None)
    if text not in instances:
        return Parsed(None, f"{SWITCHOVER}: {_show(text)} is not an instance of this campus "
                      f"({', '.join(instances)})")
    return Parsed(text)


ANNOTATIONS_CONDITION = "AnnotationsValid"


def annotations_condition(conditions: list[dict[str, Any]], errors: Sequence[str | None],
                          now: datetime) -> list[dict[str, Any]] | None:
    """The conditions with ``AnnotationsValid`` set from the parse errors, or None when
    nothing changes (so a loop that runs every second writes only on a change).

    With no error and no earlier condition nothing is written: a campus that never had
    a bad annotation carries no such condition.
    """
    found = [e for e in errors if e]
    previous = condition(conditions, ANNOTATIONS_CONDITION)
    if found:
        status, reason, message = "False", "InvalidAnnotation", "; ".join(found) + \
            " (ignored until corrected)"
    elif previous is None:
        return None
    else:
        status, reason, message = "True", "AnnotationsValid", "every annotation parses"
    if previous is not None and (previous.get("status"), previous.get("reason"),
                                 previous.get("message")) == (status, reason, message):
        return None
    return set_condition(conditions, type=ANNOTATIONS_CONDITION, status=status, reason=reason,
                         message=message, now=now)
