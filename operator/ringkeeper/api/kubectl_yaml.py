"""Reading manifests as kubectl reads them, so `ringkeeper validate` sees the same
document the API server would: a key given twice is an error (strict field validation,
kubectl's default) and go-yaml v2's booleans (a bare `y` or `N`) are booleans.

Kept apart from the checks (`validation.py`) because reading YAML is a separate job with
its own library and its own quirks; the checks work on the decoded document only.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping names the same key twice: the API server refuses duplicate fields
    (strict field validation, kubectl's default) instead of keeping the last one."""


class ManifestLoader(yaml.SafeLoader):
    """PyYAML's safe loader, made to read manifests as kubectl (go-yaml v2) does."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)
            seen: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:
                    continue  # the base class reports unhashable keys
                if key in seen:
                    raise DuplicateKeyError(
                        "while constructing a mapping", node.start_mark,
                        f'key {json.dumps(key) if isinstance(key, str) else key} already set '
                        f"in map (line {seen[key].start_mark.line + 1})", key_node.start_mark)
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)  # type: ignore[arg-type]


# go-yaml v2 reads y/Y/n/N (and yes/on/no/off, as PyYAML does) as booleans.
ManifestLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:y|Y|n|N)$"), list("yYnN"))
_BOOLS = {"y": True, "n": False}


def _construct_bool(loader: yaml.SafeLoader, node: yaml.Node) -> bool:
    value = str(loader.construct_scalar(node))  # type: ignore[arg-type]
    if value.lower() in _BOOLS:
        return _BOOLS[value.lower()]
    return bool(yaml.SafeLoader.construct_yaml_bool(loader, node))  # type: ignore[arg-type]


ManifestLoader.add_constructor("tag:yaml.org,2002:bool", _construct_bool)


def load_manifests(text: str) -> list[Any]:
    """Every non-empty document of a YAML stream, read as kubectl reads it; raises
    yaml.YAMLError (DuplicateKeyError for a key given twice)."""
    return [d for d in yaml.load_all(text, Loader=ManifestLoader) if d is not None]
