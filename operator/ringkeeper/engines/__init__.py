"""Engine profiles: every PostgreSQL/KingbaseES difference lives here, as data.

Callers get a profile from `profile_for(engine, version)` and never compare
engine names themselves; this module is the single dispatch point.
"""

from __future__ import annotations

from ringkeeper.engines.kingbase import (
    KINGBASE_PARAMETERS,
    KINGBASE_VERSION_PATTERN,
    kingbase_profile,
)
from ringkeeper.engines.parameters import Param, ParameterCatalog, ParameterProblem, ParamType
from ringkeeper.engines.postgresql import (
    POSTGRESQL_PARAMETERS,
    SUPPORTED_POSTGRESQL_VERSIONS,
    postgresql_profile,
)
from ringkeeper.engines.profile import Binaries, EngineProfile, SqlNames

ENGINES: tuple[str, ...] = ("postgresql", "kingbase")


def profile_for(engine: str, version: str) -> EngineProfile:
    """The profile for an engine name and version; ValueError says what is accepted."""
    if engine == "postgresql":
        return postgresql_profile(version)
    if engine == "kingbase":
        return kingbase_profile(version)
    raise ValueError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")


__all__ = [
    "ENGINES",
    "KINGBASE_PARAMETERS",
    "KINGBASE_VERSION_PATTERN",
    "POSTGRESQL_PARAMETERS",
    "SUPPORTED_POSTGRESQL_VERSIONS",
    "Binaries",
    "EngineProfile",
    "Param",
    "ParamType",
    "ParameterCatalog",
    "ParameterProblem",
    "SqlNames",
    "kingbase_profile",
    "postgresql_profile",
    "profile_for",
]
