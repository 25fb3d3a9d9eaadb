"""Defaults for nested objects, so the API server fills them in as Python does.

A structural schema only applies a nested object's own defaults once the object
exists; ``default: {}`` on the field makes it exist, which is what a pydantic
``default_factory`` does in Python.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, Field

M = TypeVar("M", bound=BaseModel)


def nested(model: type[M], description: str) -> Any:
    return Field(default_factory=model, description=description, json_schema_extra={"default": {}})
