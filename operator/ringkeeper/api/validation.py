"""Validate manifests from Python with the messages the API server gives.

Users meet our errors in two places: ``kubectl apply`` (the API server runs the
generated schema and CEL rules) and ``ringkeeper validate`` or code that builds
specs. Both must say the same thing, so pydantic's errors are rephrased here in
the API server's words, and rule violations carry the rule's own sentence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from .v1alpha1 import API_VERSION, BY_KIND, Resource, SpecError


@dataclass(frozen=True)
class Problem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _quote(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)


def _problem(err: dict[str, Any]) -> Problem:
    loc = tuple(err["loc"])
    path = _path(loc)
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    if kind == "value_error" and isinstance(ctx.get("error"), SpecError):
        spec_error: SpecError = ctx["error"]
        sub = spec_error.path.lstrip(".")
        if sub == "metadata.name":
            return Problem(sub, spec_error.message)
        full = ".".join(p for p in (path, sub) if p)
        return Problem(full, spec_error.message)
    if kind in ("enum", "literal_error"):
        allowed = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        values = ", ".join(f'"{a}"' for a in allowed)
        return Problem(path, f"Unsupported value: {_quote(value)}: supported values: {values}")
    if kind == "extra_forbidden":
        parent = path.rpartition(".")[0]
        return Problem(parent, f'unknown field "{path}"')
    if kind == "missing":
        return Problem(path, "Required value")
    if kind == "less_than_equal":
        return Problem(
            path,
            f"Invalid value: {value}: {path} in body should be less than or equal to {ctx['le']}",
        )
    if kind == "greater_than_equal":
        return Problem(
            path,
            f"Invalid value: {value}: {path} in body should be greater than or equal to "
            f"{ctx['ge']}",
        )
    if kind == "string_pattern_mismatch":
        return Problem(
            path, f"Invalid value: {_quote(value)}: {path} in body should match '{ctx['pattern']}'"
        )
    if kind in ("string_too_long", "too_long"):
        limit = ctx.get("max_length")
        return Problem(path, f"Too long: may not be more than {limit}")
    return Problem(path, err["msg"])


def problems_of(error: ValidationError) -> list[Problem]:
    return [_problem(dict(e)) for e in error.errors()]


def parse(doc: dict[str, Any]) -> Resource:
    """Parse one Ringkeeper object; raises ValidationError or ValueError."""
    if not isinstance(doc, dict):
        raise ValueError("a manifest must be a mapping with apiVersion, kind, metadata and spec")
    kind = doc.get("kind")
    if doc.get("apiVersion") != API_VERSION:
        raise ValueError(
            f"apiVersion must be {API_VERSION} (got {doc.get('apiVersion')!r}); "
            "this version of Ringkeeper knows no other"
        )
    model = BY_KIND.get(str(kind))
    if model is None:
        raise ValueError(f"unknown kind {kind!r}: expected one of {', '.join(sorted(BY_KIND))}")
    return model.model_validate(doc)


def validate(doc: dict[str, Any]) -> list[Problem]:
    """Every problem in one manifest, or an empty list when it is valid."""
    try:
        parse(doc)
    except ValidationError as exc:
        return problems_of(exc)
    except ValueError as exc:
        return [Problem("", str(exc))]
    return []
