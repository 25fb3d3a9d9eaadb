"""The admission rules of a Campus's `spec.parameters`: the engines' allow-lists turned
into CEL for the API server and into the Python twins `ringkeeper validate` runs.

Kept apart from the Campus model (`campus.py`) because these rules are generated from
the engine profiles' parameter catalogues rather than written by hand, and are most of the
CRD's size; the model only lists them. The PostgreSQL majors live here because the
allow-list of a setting depends on the major it first appeared in.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...engines import EngineProfile, profile_for
from ...engines.parameters import (
    CONTROL_MESSAGE,
    CONTROL_PATTERN,
    DUPLICATE_MESSAGE,
    NAME_MESSAGE,
    NAME_PATTERN,
    RAW_NAME_PATTERN,
    Param,
    ParamType,
    ascii_lower,
    unknown_message,
)
from ...engines.refused_parameters import REFUSED_PARAMETERS, refusal_message
from .common import EngineName, Rule, SpecError

if TYPE_CHECKING:
    from .campus import CampusSpec

POSTGRESQL_VERSIONS: tuple[str, ...] = ("15", "16", "17", "18")


# -- spec.parameters ---------------------------------------------------------------------
# The allow-lists live in the engine profiles (ringkeeper.engines); these rules turn
# them into CEL for admission and into the Python twins `ringkeeper validate` runs.
# Names are case-insensitive (PostgreSQL folds them), so rules compare lowerAscii().
_PARAMS = "self.parameters"
_CATALOGS = {
    EngineName.POSTGRESQL: (profile_for("postgresql", POSTGRESQL_VERSIONS[-1]).parameters,
                            POSTGRESQL_VERSIONS),
    EngineName.KINGBASE: (profile_for("kingbase", "V8R6").parameters, ()),
}


@dataclass(frozen=True)
class _NamingRule(Rule):
    """A rule whose message names the offending parameter: CEL builds it with a
    messageExpression, and the Python check raises the same sentence itself."""

    message_expression: str = ""

    def to_cel(self) -> dict[str, Any]:
        out = super().to_cel()
        out["messageExpression"] = self.message_expression
        return out


def _cel_list(names: Iterable[str]) -> str:
    return "[" + ", ".join(f"'{n}'" for n in sorted(names)) + "]"


def _lowered(spec: CampusSpec) -> list[tuple[str, str]]:
    """(lower-cased name, value) of every well-formed name, in a stable order."""
    return [(ascii_lower(k), v) for k, v in sorted(spec.parameters.items())
            if re.fullmatch(RAW_NAME_PATTERN, k)]


def _profile(spec: CampusSpec) -> EngineProfile | None:
    try:
        return profile_for(str(spec.engine), spec.version)
    except ValueError:
        return None  # the version rules above already refuse it


def _check_refused(spec: CampusSpec) -> bool:
    for name, _ in _lowered(spec):
        if name in REFUSED_PARAMETERS:
            raise SpecError(".parameters", refusal_message(name))
    return True


def _check_known(engine: EngineName) -> Callable[[CampusSpec], bool]:
    def check(spec: CampusSpec) -> bool:
        profile = _profile(spec)
        if spec.engine != engine or profile is None:
            return True
        allowed = profile.parameters.allowed(profile.major)
        for name, _ in _lowered(spec):
            if name not in REFUSED_PARAMETERS and name not in allowed:
                raise SpecError(".parameters", unknown_message(name, spec.engine, spec.version))
        return True
    return check


def _known_cel(engine: EngineName) -> str:
    """Every well-formed, not refused name is allowed for this engine (and version)."""
    catalog, versions = _CATALOGS[engine]
    refused = "{" + ", ".join(f"'{n}': true" for n in sorted(REFUSED_PARAMETERS)) + "}"
    always = [p.name for p in catalog.params if p.since == 0]
    terms = [f"n in {refused}", f"n in {_cel_list(always)}"]
    for since in sorted({p.since for p in catalog.params if p.since}):
        newer = [v for v in versions if int(v) >= since]
        names = [p.name for p in catalog.params if p.since == since]
        terms.append(f"(self.version in {_cel_list(newer)} && n in {_cel_list(names)})")
    return " || ".join(terms)


def _known_rule(engine: EngineName) -> Rule:
    ok = _known_cel(engine)
    lowered = f"{_PARAMS}.map(k, k.lowerAscii())"
    return _NamingRule(
        cel=f"!has({_PARAMS}) || self.engine != '{engine}' || {lowered}.all(n, "
        f"!n.matches('^{NAME_PATTERN}$') || {ok})",
        message=f"parameters may only set the {engine} settings Ringkeeper allows "
        "(see docs/parameters.md)",
        message_expression=f"{lowered}.filter(n, n.matches('^{NAME_PATTERN}$') && !({ok}))"
        ".map(n, 'parameters may not set ' + n + ': it is not one of the settings Ringkeeper "
        "allows for ' + self.engine + ' ' + self.version + ' (see docs/parameters.md)')[0]",
        field_path=".parameters",
        check=_check_known(engine),
        reason="FieldValueForbidden",
    )


def _refused_rule() -> Rule:
    reasons = "{" + ", ".join(f"'{n}': '{r.value}'"
                              for n, r in sorted(REFUSED_PARAMETERS.items())) + "}"
    lowered = f"{_PARAMS}.map(k, k.lowerAscii())"
    return _NamingRule(
        cel=f"!has({_PARAMS}) || !{lowered}.exists(n, n in {reasons})",
        message="parameters may not set commands, libraries, file paths or the settings "
        "Ringkeeper manages",
        message_expression=f"{lowered}.filter(n, n in {reasons})"
        f".map(n, 'parameters may not set ' + n + ': ' + {reasons}[n])[0]",
        field_path=".parameters",
        check=_check_refused,
        reason="FieldValueForbidden",
    )


def _value_rule(param: Param) -> Rule:
    def check(spec: CampusSpec) -> bool:
        return all(param.accepts(v) for n, v in _lowered(spec) if n == param.name)

    return Rule(
        cel=f"!has({_PARAMS}) || {_PARAMS}.all(k, k.lowerAscii() != '{param.name}' || "
        f"[{_PARAMS}[k]].all(v, {param.cel('v')}))",
        message=param.message(),
        field_path=".parameters",
        check=check,
        reason="FieldValueInvalid",
    )


def _bool_rule(params: list[Param]) -> Rule:
    """All on/off settings in one rule (they share their check); it names the first."""
    names = {p.name for p in params}
    sample = params[0]
    ok = sample.cel(f"{_PARAMS}[k]")
    tail = sample.message().removeprefix(f"parameter {sample.name} ")

    def check(spec: CampusSpec) -> bool:
        for n, v in _lowered(spec):
            if n in names and not sample.accepts(v):
                raise SpecError(".parameters", f"parameter {n} {tail}")
        return True

    return _NamingRule(
        cel=f"!has({_PARAMS}) || {_PARAMS}.all(k, !(k.lowerAscii() in {_cel_list(names)}) "
        f"|| {ok})",
        message=f"on/off parameters {tail}",
        message_expression=f"{_PARAMS}.filter(k, k.lowerAscii() in {_cel_list(names)} && "
        f"!({ok})).map(k, 'parameter ' + k.lowerAscii() + ' {tail}')[0]",
        field_path=".parameters",
        check=check,
        reason="FieldValueInvalid",
    )


def _value_params() -> list[Param]:
    """Every allowed parameter once; the engines share each Param they have in common."""
    seen: dict[str, Param] = {}
    for catalog, _ in _CATALOGS.values():
        for p in catalog.params:
            if seen.setdefault(p.name, p) != p:
                raise ValueError(f"{p.name} differs between engines: guard its rule by engine")
    return list(seen.values())


PARAMETER_RULES: tuple[Rule, ...] = (
    Rule(
        cel=f"!has({_PARAMS}) || {_PARAMS}.all(k, k.matches('^{RAW_NAME_PATTERN}$'))",
        message=NAME_MESSAGE,
        field_path=".parameters",
        check=lambda s: all(re.fullmatch(RAW_NAME_PATTERN, k) for k in s.parameters),
        reason="FieldValueInvalid",
    ),
    Rule(
        cel=f"!has({_PARAMS}) || {_PARAMS}.all(k, !{_PARAMS}[k].matches('{CONTROL_PATTERN}'))",
        message=CONTROL_MESSAGE,
        field_path=".parameters",
        check=lambda s: not any(re.search(CONTROL_PATTERN, v) for v in s.parameters.values()),
        reason="FieldValueInvalid",
    ),
    Rule(
        cel=f"!has({_PARAMS}) || {_PARAMS}.all(k, {_PARAMS}.all(j, j == k || "
        "j.lowerAscii() != k.lowerAscii()))",
        message=DUPLICATE_MESSAGE,
        field_path=".parameters",
        check=lambda s: len({ascii_lower(k) for k in s.parameters}) == len(s.parameters),
        reason="FieldValueInvalid",
    ),
    _refused_rule(),
    *(_known_rule(engine) for engine in _CATALOGS),
    _bool_rule([p for p in _value_params() if p.type is ParamType.BOOL]),
    *(_value_rule(p) for p in _value_params() if p.type is not ParamType.BOOL),
)
