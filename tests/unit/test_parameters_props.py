"""Property tests: random and hostile spec.parameters maps through the Campus model,
`validate`, the manifest builders and the agent's config renderer.

Whatever the map holds (newlines, quotes, NUL, unicode, case variants of refused names,
1 MB values, empty names), nothing crashes, every line the renderer writes parses back as
`name = 'value'` with a name and value the engine's allow-list permits, and admission and
the agent agree on what is allowed.
"""

from __future__ import annotations

import json
import re
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from ringkeeper.agent.config import InstanceSettings, managed_settings, render_config
from ringkeeper.api.v1alpha1 import Campus
from ringkeeper.api.validation import validate
from ringkeeper.core import manifests
from ringkeeper.engines import EngineProfile, Param, ParamType, profile_for
from ringkeeper.engines.parameters import BASE_UNITS, BOOL_VALUES, ascii_lower
from ringkeeper.engines.refused_parameters import REFUSED_PARAMETERS

PROFILES = [profile_for("postgresql", v) for v in ("15", "16", "17", "18")] + [
    profile_for("kingbase", "V8R6")]
ALL_PARAMS: list[Param] = list(profile_for("postgresql", "18").parameters.params)
HOSTILE_VALUES = [
    "", " ", "'", "''", "\\", "\\'", "a'b", "on'\narchive_command = 'sh",
    "64MB\n", "\n", "\r", "\x00", "64MB\x00archive_command", "\x1b[2J", "\u2028", "\x85",
    "ＯＮ", "on\u0000", "1e9", "0x10", "-0", "+5", "5 MB", "5mb", "１０", "9" * 30,
    "%m' ; archive_command = 'sh -c env", "Asia/Shanghai", "ISO, YMD",
    "read committed", "pglz", "İ", "K",  # K is KELVIN SIGN: str.lower() makes it 'k'
]
HOSTILE_NAMES = [
    "", " ", "\n", "work_mem\narchive_mode", "work_mem = '1MB'\narchive_command", "a\x00",
    "include", "INCLUDE", "İnclude", "wörk_mem", "work-mem", "1abc", "w" * 64,
    "ARCHIVE_COMMAND", "Restore_Command", "shared_preload_libraries", "ſhared_buffers",
    "ｗｏｒｋ＿ｍｅｍ", "work_mem ", " work_mem", "auto_explain.log_analyze",
]


def _recase(name: str) -> st.SearchStrategy[str]:
    return st.lists(st.booleans(), min_size=len(name), max_size=len(name)).map(
        lambda flips: "".join(c.upper() if f else c for c, f in zip(name, flips, strict=True)))


def _valid_value(p: Param) -> st.SearchStrategy[str]:
    if p.type is ParamType.BOOL:
        return st.sampled_from(BOOL_VALUES).flatmap(_recase)
    if p.type is ParamType.ENUM:
        return st.sampled_from(p.values).flatmap(_recase)
    if p.type is ParamType.STRING:
        return st.from_regex(p.pattern, fullmatch=True)
    if p.type is ParamType.INT:
        bare = st.integers(int(p.min), int(p.max)).map(str)
        if not p.unit:
            return bare
        units, _ = BASE_UNITS[p.unit]
        return st.one_of(bare, st.tuples(st.integers(-10, 10**10), st.sampled_from(
            sorted(units))).map(lambda t: f"{t[0]}{t[1]}"))
    return st.floats(p.min, p.max).map(lambda x: f"{x:.4f}")


def _megabyte(_: int) -> str:
    return "1" * (1 << 20)


def _any_value() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(HOSTILE_VALUES), st.text(max_size=40),
                     st.integers(-10**12, 10**12).map(str), st.just(0).map(_megabyte))


def _entry() -> st.SearchStrategy[tuple[str, str]]:
    allowed = st.sampled_from(ALL_PARAMS).flatmap(
        lambda p: st.tuples(_recase(p.name), st.one_of(_valid_value(p), _any_value())))
    refused = st.tuples(st.sampled_from(sorted(REFUSED_PARAMETERS)).flatmap(_recase),
                        _any_value())
    other = st.tuples(st.one_of(st.sampled_from(HOSTILE_NAMES), st.text(max_size=70)),
                      _any_value())
    return st.one_of(allowed, allowed, refused, other)


PARAM_MAPS = st.lists(_entry(), max_size=12).map(dict)
# 1 MB values are the point of some examples, not a generator accident.
_SLOW = [HealthCheck.too_slow, HealthCheck.data_too_large]


def _campus(profile: EngineProfile, params: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "ringkeeper.io/v1alpha1", "kind": "Campus",
            "metadata": {"name": "fuzz", "namespace": "lis", "uid": "u-1"},
            "spec": {"engine": profile.engine, "version": profile.version, "instances": 3,
                     "parameters": params}}


LINE = re.compile(r"([a-z][a-z0-9_.]*) = '((?:[^'\\\x00-\x1f\x7f]|''|\\\\)*)'")


def _parse(text: str) -> list[tuple[str, str]]:
    """Every setting line of a rendered file, unquoted; fails on any other line."""
    out = []
    for line in text.split("\n")[:-1]:
        if line.startswith("#"):
            assert "\r" not in line and "\x00" not in line, line
            continue
        m = LINE.fullmatch(line)
        assert m, f"line the allow-list did not permit: {line!r}"
        out.append((m[1], re.sub(r"''|\\\\", lambda g: g[0][0], m[2])))
    assert text.endswith("\n")
    return out


def _render(profile: EngineProfile, params: dict[str, Any]) -> Any:
    settings_ = InstanceSettings(campus="fuzz", instance="fuzz-1", pod_ip="10.1.2.3",
                                 port=profile.default_port, socket_dir="/run/db",
                                 primary=False, upstream_host="10.1.2.4", peers=("fuzz-0",),
                                 sync_number=1, passfile="/run/db/pgpass")
    managed = managed_settings(profile, settings_)
    return render_config(profile, managed, params), managed


@settings(max_examples=120, deadline=None, suppress_health_check=_SLOW)
@given(profile=st.sampled_from(PROFILES), params=PARAM_MAPS)
def test_hostile_maps_never_crash_and_never_render_a_forbidden_line(
        profile: EngineProfile, params: dict[str, str]) -> None:
    doc = _campus(profile, params)
    problems = validate(doc)
    try:
        Campus.model_validate(doc)
        model_ok = True
    except ValidationError:
        model_ok = False
    assert model_ok == (problems == [])

    out, managed = _render(profile, params)
    lines = _parse(out.text)
    user_part = _parse(out.text.split("# Managed by Ringkeeper:\n")[0])
    allowed = profile.parameters.allowed(profile.major)
    for name, value in user_part:
        assert name in allowed, name
        assert allowed[name].accepts(value), (name, value)
        assert name not in REFUSED_PARAMETERS
    # Ringkeeper's settings come last and win; each is written exactly once.
    managed_lines = lines[len(user_part):]
    assert [n for n, _ in managed_lines] == [n for n in managed if n not in dict(user_part)]
    assert len({n for n, _ in lines}) == len(lines)
    # Admission and agent agree: an admitted map is rendered whole, and a map the agent
    # renders whole is admitted.
    if problems == []:
        assert out.refused == ()
        assert dict(user_part) == {ascii_lower(k): v for k, v in params.items()}
    if out.refused == ():
        assert problems == []
    # Messages about refused entries never carry raw control characters.
    for problem in out.refused:
        assert not re.search(r"[\x00-\x1f\x7f]", problem.message)


@settings(max_examples=60, deadline=None, suppress_health_check=_SLOW)
@given(profile=st.sampled_from(PROFILES), params=PARAM_MAPS)
def test_manifest_builders_take_any_parameters(profile: EngineProfile,
                                               params: dict[str, str]) -> None:
    marker = "rk-marker-7f3a9c"
    objs = manifests.desired(_campus(profile, {**params, "application_nam": marker}),
                             profile, "10.0.0.0/8")
    text = json.dumps(objs)
    assert objs and isinstance(text, str)
    # spec.parameters reaches the server through the agent's renderer only, never through
    # the Pod spec (environment, arguments) where no check would see it.
    assert marker not in text and "application_nam" not in text


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_numeric_check_matches_exact_arithmetic(data: st.DataObject) -> None:
    """accepts() against a reference written separately: the value in base units, exact."""
    p = data.draw(st.sampled_from([q for q in ALL_PARAMS
                                   if q.type in (ParamType.INT, ParamType.REAL)]))
    value = data.draw(st.one_of(_valid_value(p), _any_value()))
    expected = _reference_accepts(p, value)
    assert p.accepts(value) == expected, (p.name, value)


def _reference_accepts(p: Param, value: str) -> bool:
    units: dict[str, int] = BASE_UNITS[p.unit][0] if p.unit else {}
    number_re = r"-?[0-9]{1,10}" if p.type is ParamType.INT else r"-?[0-9]{1,10}(\.[0-9]{1,10})?"
    m = re.fullmatch(f"({number_re})({'|'.join(map(re.escape, units))})" if units
                     else f"({number_re})()", value)
    if not m and units:
        m = re.fullmatch(f"({number_re})()", value)
    if not m:
        return False
    number, unit = m.group(1), m.groups()[-1]
    if p.type is ParamType.INT:
        base = BASE_UNITS[p.unit][1] if p.unit else 1
        scaled = Fraction(int(number)) * (units[unit] if unit else base) / base
        return scaled.denominator == 1 and p.min <= scaled <= p.max
    x = float(number)
    if unit:
        x = x * (units[unit] / BASE_UNITS[p.unit][1])
    return p.min <= x <= p.max


def _sample(p: Param, strings: dict[str, str]) -> str:
    if p.type is ParamType.BOOL:
        return "on"
    if p.type is ParamType.ENUM:
        return p.values[-1]
    if p.type is ParamType.STRING:
        return strings[p.name]
    return str(int(p.min)) if p.type is ParamType.INT else str(p.max)


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: f"{p.engine}-{p.version}")
def test_every_allowed_parameter_has_a_valid_value_that_renders(profile: EngineProfile) -> None:
    strings = {"timezone": "UTC", "log_timezone": "UTC", "datestyle": "ISO, MDY",
               "log_line_prefix": "%m [%p] "}
    for p in profile.parameters.allowed(profile.major).values():
        value = _sample(p, strings)
        assert p.accepts(value), (p.name, value)
        if p.type is ParamType.INT:  # the stated maximum is reachable in the grammar
            assert p.accepts(str(int(p.max))), p.name
        assert validate(_campus(profile, {p.name.upper(): value})) == [], p.name
        out, _ = _render(profile, {p.name.upper(): value})
        assert (p.name, value) in _parse(out.text)
