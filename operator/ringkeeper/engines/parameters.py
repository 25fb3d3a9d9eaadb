"""Which engine settings a Campus may set, as data, checked the same way everywhere.

`spec.parameters` ends up as lines of the server's configuration, and several
settings run shell commands or load code as the database user (archive_command,
shared_preload_libraries, ...), whose environment holds every generated password.
A deny-list always misses one, so this module is an ALLOW-list: each engine
profile carries a `ParameterCatalog` of the tuning settings a DBA legitimately
changes, each with its type and range, plus the names that are refused with a
reason. Anything else is refused too.

The same objects drive three checks that must agree: the Campus model (Python,
`ringkeeper validate`), the CRD's CEL rules (`Param.cel` writes the expression
from the very same bounds) and the agent, which checks again what it is about to
render. Names compare case-insensitively as PostgreSQL's do; values follow a
grammar that is a strict subset of what the server accepts (no hex, no spaces
before a unit, units only where the setting has one), so whatever passes here
also starts the server. The names refused with a reason are `refused_parameters.py`'s.
Pure: no I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from fractions import Fraction

from .refused_parameters import REFUSED_PARAMETERS, ParameterRefusal, refusal_message

# A parameter name after ASCII lower-casing; at most 63 characters (NAMEDATALEN - 1).
NAME_PATTERN = r"[a-z][a-z0-9_.]{0,62}"
# The same, before lower-casing: what admission lets through to the other rules.
RAW_NAME_PATTERN = r"[A-Za-z][A-Za-z0-9_.]{0,62}"
# Control characters end a configuration line or truncate it (NUL): never allowed.
CONTROL_PATTERN = r"[\x00-\x1f\x7f-\x9f]"
MAX_VALUE_LENGTH = 1024
MAX_PARAMETERS = 100

NAME_MESSAGE = (
    "parameter names must start with a letter and hold only letters, digits, '_' and '.' "
    "(at most 63 characters)"
)
CONTROL_MESSAGE = "parameter values must not contain control characters (newline, tab, NUL ...)"
DUPLICATE_MESSAGE = (
    "parameter names are case-insensitive: set each parameter once (e.g. not both "
    "work_mem and WORK_MEM)"
)

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def ascii_lower(text: str) -> str:
    """Lower-case A-Z only, like CEL's lowerAscii() and PostgreSQL's name folding
    (str.lower() would also fold non-ASCII letters, and 'K' (Kelvin) to 'k')."""
    return text.translate(_ASCII_LOWER)


class ParamType(StrEnum):
    BOOL = "bool"
    INT = "int"
    REAL = "real"
    ENUM = "enum"
    STRING = "string"


# Units the server accepts, in its smallest unit of each kind (bytes, milliseconds).
# Case matters: PostgreSQL refuses "mb". Longer suffixes first, so "kB" wins over "B"
# and "ms" over "s" wherever suffixes are tried in order.
MEMORY_UNITS: dict[str, int] = {"kB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4, "B": 1}
TIME_UNITS: dict[str, int] = {"ms": 1, "min": 60_000, "s": 1000, "h": 3_600_000,
                              "d": 86_400_000}
# A setting's base unit (what a bare number means) in those smallest units.
BASE_UNITS: dict[str, tuple[dict[str, int], int]] = {
    "B": (MEMORY_UNITS, 1),
    "kB": (MEMORY_UNITS, 1024),
    "8kB": (MEMORY_UNITS, 8192),
    "MB": (MEMORY_UNITS, 1024**2),
    "ms": (TIME_UNITS, 1),
    "s": (TIME_UNITS, 1000),
    "min": (TIME_UNITS, 60_000),
}
_INT_DIGITS = r"-?[0-9]{1,10}"
_REAL_DIGITS = r"-?[0-9]{1,10}(?:\.[0-9]{1,10})?"
BOOL_VALUES: tuple[str, ...] = ("on", "off", "true", "false", "yes", "no", "1", "0")


def _cel_str(text: str) -> str:
    """A CEL single-quoted string literal of our own texts (a regex's backslashes doubled;
    no quotes or control characters, which no text of ours holds)."""
    if "'" in text or re.search(CONTROL_PATTERN, text):
        raise ValueError(f"cannot embed {text!r} in a CEL literal")
    return "'" + text.replace("\\", "\\\\") + "'"


def _fmt(x: int | float | Fraction) -> str:
    if isinstance(x, float) and not x.is_integer():
        return repr(x)
    return str(int(x))


@dataclass(frozen=True)
class Param:
    """One settable parameter: its type and the values Ringkeeper lets through.

    `unit` is the base unit of an int or real setting ('' for none): a bare number
    means that unit, and a number followed by a unit of the same kind is converted.
    A converted value must be a whole number of base units (PostgreSQL would round;
    refusing is simpler to state and identical in CEL). `since` is the first
    PostgreSQL major that has the setting (0: every supported one).
    """

    name: str
    type: ParamType
    min: float = 0
    max: float = 0
    unit: str = ""
    values: tuple[str, ...] = ()
    pattern: str = ""
    since: int = 0
    hint: str = ""  # what a string's pattern allows, in words

    def __post_init__(self) -> None:
        if not re.fullmatch(NAME_PATTERN, self.name):
            raise ValueError(f"bad parameter name {self.name!r}")
        if self.unit and self.unit not in BASE_UNITS:
            raise ValueError(f"{self.name}: unknown base unit {self.unit!r}")
        if self.type is ParamType.INT and not (float(self.min).is_integer()
                                               and float(self.max).is_integer()):
            raise ValueError(f"{self.name}: int bounds must be whole numbers")
        if self.type is ParamType.STRING and not self.pattern:
            raise ValueError(f"{self.name}: a string parameter needs a pattern")

    # -- what the user is told -------------------------------------------------------------
    def message(self) -> str:
        """The sentence admission, validate and the agent give for a bad value."""
        head = f"parameter {self.name} must be"
        if self.type is ParamType.BOOL:
            return f"{head} on or off (true/false, yes/no and 1/0 work too)"
        if self.type is ParamType.ENUM:
            return f"{head} one of: {', '.join(self.values)}"
        if self.type is ParamType.STRING:
            return f"{head} {self.hint or 'text matching ' + self.pattern}"
        kind = "a whole number" if self.type is ParamType.INT else "a number"
        text = f"{head} {kind} from {_fmt(self.min)} to {_fmt(self.max)}"
        if self.unit:
            units, _ = BASE_UNITS[self.unit]
            text += (f" {self.unit}" if self.unit != "8kB" else " pages of 8kB")
            text += f", or with a unit ({', '.join(_unit_order(units))})"
        return text

    # -- the Python check --------------------------------------------------------------------
    def accepts(self, value: str) -> bool:
        """Whether the server would get exactly a value of the documented kind and range."""
        if len(value) > MAX_VALUE_LENGTH or re.search(CONTROL_PATTERN, value):
            return False
        if self.type is ParamType.BOOL:
            return ascii_lower(value) in BOOL_VALUES
        if self.type is ParamType.ENUM:
            return ascii_lower(value) in self.values
        if self.type is ParamType.STRING:
            return re.fullmatch(self.pattern, value) is not None
        number, unit = self._split(value)
        if number is None:
            return False
        if self.type is ParamType.INT:
            return self._int_in_range(int(number), unit)
        return self._real_in_range(float(number), unit)

    def _split(self, value: str) -> tuple[str | None, str]:
        digits = _INT_DIGITS if self.type is ParamType.INT else _REAL_DIGITS
        for unit in self._units():
            if value.endswith(unit):
                number = value[: len(value) - len(unit)]
                return (number if re.fullmatch(digits, number) else None), unit
        return (value if re.fullmatch(digits, value) else None), ""

    def _units(self) -> list[str]:
        if not self.unit:
            return []
        return _unit_order(BASE_UNITS[self.unit][0])

    def _int_in_range(self, n: int, unit: str) -> bool:
        if not unit:
            return self.min <= n <= self.max
        lo, hi, step = self._int_bounds(unit)
        return lo <= n <= hi and n % step == 0

    def _int_bounds(self, unit: str) -> tuple[int, int, int]:
        """For a value written with `unit`: the smallest and largest number allowed and
        the step it must be a multiple of (to be a whole number of base units)."""
        units, base = BASE_UNITS[self.unit]
        mult = units[unit]
        if mult >= base:
            per = mult // base  # mult is a multiple of base for every pair we allow
            return (math.ceil(Fraction(int(self.min), per)),
                    math.floor(Fraction(int(self.max), per)), 1)
        step = base // mult
        return int(self.min) * step, int(self.max) * step, step

    def _real_factor(self, unit: str) -> float:
        units, base = BASE_UNITS[self.unit]
        return units[unit] / base

    def _real_in_range(self, x: float, unit: str) -> bool:
        if unit:
            x = x * self._real_factor(unit)
        return float(self.min) <= x <= float(self.max)

    # -- the same check in CEL ---------------------------------------------------------------
    def cel(self, v: str) -> str:
        """A CEL expression, true when the string variable `v` holds a value `accepts`
        takes (length and control characters are checked by other rules). One-element
        lists bind sub-results to names (`[x].all(n, ...)`), which keeps the CRD small."""
        if self.type is ParamType.BOOL:
            return f"{v}.lowerAscii() in [{', '.join(map(_cel_str, BOOL_VALUES))}]"
        if self.type is ParamType.ENUM:
            return f"{v}.lowerAscii() in [{', '.join(map(_cel_str, self.values))}]"
        if self.type is ParamType.STRING:
            return f"{v}.matches({_cel_str('^(?:' + self.pattern + ')$')})"
        digits = _INT_DIGITS if self.type is ParamType.INT else _REAL_DIGITS
        units = self._units()
        suffix = f"(?:{'|'.join(units)})?" if units else ""
        shape = f"{v}.matches({_cel_str('^' + digits + suffix + '$')})"
        # Suffixes are tried longest first, as in _split; the bare number comes last.
        expr = self._cel_range(v, "")
        for unit in reversed(units):
            number = f"{v}.substring(0, size({v}) - {len(unit)})"
            expr = (f"({v}.endsWith({_cel_str(unit)}) ? "
                    f"{self._cel_range(number, unit)} : {expr})")
        return f"({shape} && {expr})"

    def _cel_range(self, number: str, unit: str) -> str:
        if self.type is ParamType.INT:
            if not unit:
                lo, hi, step = int(self.min), int(self.max), 1
            else:
                lo, hi, step = self._int_bounds(unit)
            test = f"n >= {lo} && n <= {hi}" + (f" && n % {step} == 0" if step != 1 else "")
            return f"[int({number})].all(n, {test})"
        scale = f" * {self._real_factor(unit)!r}" if unit else ""
        return (f"[double({number}){scale}].all(x, x >= {float(self.min)!r} && "
                f"x <= {float(self.max)!r})")


def _unit_order(units: Mapping[str, int]) -> list[str]:
    """Suffixes to try: longest first so 'kB' is not read as 'B', 'ms' not as 's'."""
    return sorted(units, key=lambda u: (-len(u), list(units).index(u)))


def unknown_message(name: str, engine: str, version: str) -> str:
    return (f"parameters may not set {name}: it is not one of the settings Ringkeeper allows "
            f"for {engine} {version} (see docs/parameters.md)")


@dataclass(frozen=True)
class ParameterProblem:
    """One refused entry of spec.parameters: the name as given and a sentence."""

    name: str
    message: str


@dataclass(frozen=True)
class ParameterCatalog:
    """The settable parameters of one engine (all its versions) and the refused names."""

    engine: str
    params: tuple[Param, ...]
    refused: Mapping[str, ParameterRefusal] = field(
        default_factory=lambda: dict(REFUSED_PARAMETERS))

    def __post_init__(self) -> None:
        names = [p.name for p in self.params]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.engine}: duplicate parameter in the allow-list")
        overlap = set(names) & set(self.refused)
        if overlap:
            raise ValueError(f"{self.engine}: allowed and refused at once: {sorted(overlap)}")

    @property
    def by_name(self) -> dict[str, Param]:
        return {p.name: p for p in self.params}

    def allowed(self, major: int) -> dict[str, Param]:
        """The parameters a server of this (base) major accepts."""
        return {p.name: p for p in self.params if p.since <= major}

    def problems(self, params: Mapping[str, str], *, major: int,
                 version: str) -> list[ParameterProblem]:
        """Every refused entry, in the order admission reports them; [] when all pass.

        Messages never quote a raw name or value: names are only named once they
        match NAME_PATTERN, so a newline or escape sequence never reaches a log line.
        """
        out: list[ParameterProblem] = []
        allowed = self.allowed(major)
        seen: dict[str, str] = {}
        for raw, value in sorted(params.items()):
            if not isinstance(raw, str) or not re.fullmatch(RAW_NAME_PATTERN, raw):
                out.append(ParameterProblem(str(raw), NAME_MESSAGE))
                continue
            name = ascii_lower(raw)
            if name in seen:
                out.append(ParameterProblem(raw, DUPLICATE_MESSAGE))
                continue
            seen[name] = raw
            if not isinstance(value, str):
                out.append(ParameterProblem(raw, f"parameter {name} must be a string"))
                continue
            if re.search(CONTROL_PATTERN, value):
                out.append(ParameterProblem(raw, CONTROL_MESSAGE))
                continue
            if len(value) > MAX_VALUE_LENGTH:
                out.append(ParameterProblem(
                    raw, f"parameter {name} is longer than {MAX_VALUE_LENGTH} characters"))
                continue
            if name in self.refused:
                out.append(ParameterProblem(raw, refusal_message(name)))
                continue
            param = allowed.get(name)
            if param is None:
                out.append(ParameterProblem(raw, unknown_message(name, self.engine, version)))
                continue
            if not param.accepts(value):
                out.append(ParameterProblem(raw, param.message()))
        return out


__all__ = [
    "BOOL_VALUES",
    "CONTROL_MESSAGE",
    "CONTROL_PATTERN",
    "DUPLICATE_MESSAGE",
    "MAX_PARAMETERS",
    "MAX_VALUE_LENGTH",
    "NAME_MESSAGE",
    "NAME_PATTERN",
    "RAW_NAME_PATTERN",
    "Param",
    "ParamType",
    "ParameterCatalog",
    "ParameterProblem",
    "ascii_lower",
    "unknown_message",
]
