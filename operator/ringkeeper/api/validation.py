"""Validate manifests from Python with the messages the API server gives.

Users meet our errors in two places: ``kubectl apply`` (the API server runs the
generated schema and CEL rules) and ``ringkeeper validate`` or code that builds
specs. Both must say the same thing, so pydantic's errors are rephrased here in
the API server's words, and rule violations carry the rule's own sentence.

Both must also accept and refuse the same input. Manifests are therefore read as
kubectl reads them (``load_manifests``: duplicate keys refused, YAML 1.1 booleans
as go-yaml resolves them) and checked as the API server checks them
(``validate``): a DNS-1123 subdomain as the name, integers within int64, JSON
types without coercion (``"yes"`` is no boolean, ``"3"`` no integer; pydantic's
strict JSON mode), nulls pruned as a structural schema prunes them. The operator
reads objects the API server already checked through the same models in lax
mode, where their types are already right. Reading the YAML itself is
`kubectl_yaml.py`'s job.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from .v1alpha1 import API_VERSION, BY_KIND, Resource, SpecError


@dataclass(frozen=True)
class FieldProblem:
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
    """A value as Go's %q-ish printing in API server messages shows it."""
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else str(value)


def json_type(value: Any) -> str:
    """The JSON Schema type name of a decoded value, as the API server names it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


# pydantic's strict-mode type errors and the JSON Schema type each one expected.
_TYPE_ERRORS = {
    "int_type": "integer", "int_parsing": "integer", "int_from_float": "integer",
    "string_type": "string", "bool_type": "boolean", "bool_parsing": "boolean",
    "float_type": "number", "float_parsing": "number", "dict_type": "object",
    "model_type": "object", "model_attributes_type": "object", "list_type": "array",
}


def _type_problem(path: str, expected: str, value: Any) -> FieldProblem:
    got = json_type(value)
    return FieldProblem(path, f'Invalid value: "{got}": {path} in body must be of type {expected}: '
                         f'"{got}"')


def _problem(err: dict[str, Any]) -> FieldProblem:
    loc = tuple(err["loc"])
    path = _path(loc)
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    if kind == "value_error" and isinstance(ctx.get("error"), SpecError):
        spec_error: SpecError = ctx["error"]
        sub = spec_error.path.lstrip(".")
        if sub == "metadata.name":
            return FieldProblem(sub, spec_error.message)
        full = ".".join(p for p in (path, sub) if p)
        if not sub and isinstance(value, str):
            # A rule on a string field: the API server names the field's type.
            return FieldProblem(full, f'Invalid value: "string": {spec_error.message}')
        return FieldProblem(full, spec_error.message)
    if kind in _TYPE_ERRORS or (kind == "enum" and not isinstance(value, str)):
        expected = _TYPE_ERRORS.get(kind, "string")
        return _type_problem(path, expected, value)
    if kind in ("enum", "literal_error"):
        allowed = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        values = ", ".join(f'"{a}"' for a in allowed)
        return FieldProblem(path, f"Unsupported value: {_quote(value)}: supported values: {values}")
    if kind == "extra_forbidden":
        parent = path.rpartition(".")[0]
        return FieldProblem(parent, f'unknown field "{path}"')
    if kind == "missing":
        return FieldProblem(path, "Required value")
    if kind == "less_than_equal":
        return FieldProblem(
            path,
            f"Invalid value: {value}: {path} in body should be less than or equal to {ctx['le']}",
        )
    if kind == "greater_than_equal":
        return FieldProblem(
            path,
            f"Invalid value: {value}: {path} in body should be greater than or equal to "
            f"{ctx['ge']}",
        )
    if kind == "string_pattern_mismatch":
        return FieldProblem(
            path, f"Invalid value: {_quote(value)}: {path} in body should match '{ctx['pattern']}'"
        )
    if kind in ("string_too_long", "too_long"):
        limit = int(ctx.get("max_length", -1))
        if isinstance(value, str):
            return FieldProblem(path, f"Too long: may not be more than {limit} "
                                 f"{'byte' if limit == 1 else 'bytes'}")
        actual = ctx.get("actual_length", len(value) if isinstance(value, dict | list) else -1)
        return FieldProblem(path, f"Too many: {actual}: must have at most {limit} "
                             f"{'item' if limit == 1 else 'items'}")
    return FieldProblem(path, err["msg"])


def problems_of(error: ValidationError) -> list[FieldProblem]:
    return [_problem(dict(e)) for e in error.errors()]


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# The API server's own check of a custom object's name (apimachinery NameIsDNSSubdomain).
DNS1123_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_SUBDOMAIN_MESSAGE = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' "
    "or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex "
    f"used for validation is '{DNS1123_SUBDOMAIN}')"
)


def name_problems(name: Any) -> list[FieldProblem]:
    """metadata.name as the API server checks it for every custom object."""
    if name is None or name == "":
        return [FieldProblem("metadata.name", "Required value: name or generateName is required")]
    if not isinstance(name, str):
        return [_type_problem("metadata.name", "string", name)]
    out = []
    if len(name) > 253:
        out.append(FieldProblem("metadata.name", f"Invalid value: {_quote(name)}: must be no more "
                                            "than 253 characters"))
    # fullmatch: Python's `$` would also match before a trailing newline.
    if re.fullmatch(DNS1123_SUBDOMAIN, name, flags=re.ASCII) is None:
        out.append(FieldProblem("metadata.name", f"Invalid value: {_quote(name)}: "
                                            f"{_SUBDOMAIN_MESSAGE}"))
    return out


_LABEL_KEY = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_VALUE = f"({_LABEL_KEY})?"
_LABEL_KEY_MESSAGE = (
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
    "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for "
    f"validation is '{_LABEL_KEY}')"
)
_LABEL_VALUE_MESSAGE = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' "
    "or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or "
    f"'my_value',  or '12345', regex used for validation is '{_LABEL_VALUE}')"
)
_ANNOTATIONS_LIMIT = 256 * 1024


def _key_problems(path: str, key: str) -> list[FieldProblem]:
    """A label or annotation key as apimachinery's IsQualifiedName checks it."""
    parts = key.split("/")
    if len(parts) > 2:
        return [FieldProblem(path, f"Invalid value: {_quote(key)}: a valid label key "
                              f"{_LABEL_KEY_MESSAGE} with an optional DNS subdomain prefix "
                              "and '/' (e.g. 'example.com/MyName')")]
    out = []
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix:
            out.append(FieldProblem(path, f"Invalid value: {_quote(key)}: prefix part must be "
                                     "non-empty"))
        elif len(prefix) > 253 or not re.fullmatch(DNS1123_SUBDOMAIN, prefix, flags=re.ASCII):
            out.append(FieldProblem(path, f"Invalid value: {_quote(key)}: prefix part "
                                     f"{_SUBDOMAIN_MESSAGE}"))
    name = parts[-1]
    if not name:
        out.append(FieldProblem(path, f"Invalid value: {_quote(key)}: name part must be non-empty"))
    elif len(name) > 63:
        out.append(FieldProblem(path, f"Invalid value: {_quote(key)}: name part must be no more "
                                 "than 63 bytes"))
    if not re.fullmatch(_LABEL_KEY, name, flags=re.ASCII):
        out.append(FieldProblem(path, f"Invalid value: {_quote(key)}: name part "
                                 f"{_LABEL_KEY_MESSAGE}"))
    return out


def label_problems(meta: Any) -> list[FieldProblem]:
    """Labels and annotations as the API server checks them on every object (types are
    metadata_problems' business)."""
    if not isinstance(meta, dict):
        return []
    out: list[FieldProblem] = []
    labels = meta.get("labels")
    for key, value in (labels if isinstance(labels, dict) else {}).items():
        out += _key_problems("metadata.labels", str(key))
        text = "" if value is None else str(value)
        if len(text.encode()) > 63:
            out.append(FieldProblem("metadata.labels",
                               f"Invalid value: {_quote(text)}: must be no more than 63 bytes"))
        if not re.fullmatch(_LABEL_VALUE, text, flags=re.ASCII):
            out.append(FieldProblem("metadata.labels",
                               f"Invalid value: {_quote(text)}: {_LABEL_VALUE_MESSAGE}"))
    annotations = meta.get("annotations")
    size = 0
    for key, value in (annotations if isinstance(annotations, dict) else {}).items():
        out += _key_problems("metadata.annotations", str(key).lower())
        size += len(str(key).encode()) + len(("" if value is None else str(value)).encode())
    if size > _ANNOTATIONS_LIMIT:
        out.append(FieldProblem("metadata.annotations",
                           f"Too long: may not be more than {_ANNOTATIONS_LIMIT} bytes"))
    return out


def _as_json(node: Any) -> Any:
    """What the API server decodes: nulls pruned from objects (a structural schema drops
    null fields that are not nullable, and none of ours is), whole floats as integers
    (kubectl's YAML-to-JSON writes the float 3.0 as 3), integers beyond int64 as floats
    (apimachinery's JSON decoder falls back to float64, so an integer field then says
    `must be of type integer: "number"`), keys as strings."""
    if isinstance(node, dict):
        return {str(k).lower() if isinstance(k, bool) else str(k): _as_json(v)
                for k, v in node.items() if v is not None}
    if isinstance(node, list):
        return [_as_json(v) for v in node]
    if isinstance(node, bool):
        return node
    if isinstance(node, int) and not INT64_MIN <= node <= INT64_MAX:
        try:
            return float(node)
        except OverflowError:  # beyond float64 as well: refused either way
            return _MAX_FLOAT if node > 0 else -_MAX_FLOAT
    if isinstance(node, float) and node.is_integer() and INT64_MIN <= node <= INT64_MAX:
        return int(node)
    return node


_MAX_FLOAT = 1.7976931348623157e308


def parse(doc: dict[str, Any]) -> Resource:
    """Parse one Ringkeeper object leniently, as the operator reads objects from the API
    server (types already right); raises ValidationError or ValueError."""
    return _model_for(doc).model_validate(doc)


def parse_strict(doc: dict[str, Any]) -> Resource:
    """Parse one manifest as the API server would admit it: JSON types without coercion.
    Raises ValidationError or ValueError."""
    model = _model_for(doc)
    return model.model_validate_json(json.dumps(_as_json(doc), ensure_ascii=False),
                                     strict=True)


def _model_for(doc: Any) -> type[Resource]:
    if not isinstance(doc, dict):
        raise ValueError("a manifest must be a mapping with apiVersion, kind, metadata and spec")
    kind, version = doc.get("kind"), doc.get("apiVersion")
    model = BY_KIND.get(str(kind))
    if version != API_VERSION or model is None:
        # kubectl's words when no CRD serves the pair, then what this version does serve.
        raise ValueError(
            f"no matches for kind {_quote(str(kind))} in version {_quote(str(version))}: "
            f"Ringkeeper serves {', '.join(sorted(BY_KIND))} in {API_VERSION} only"
        )
    return model


# Go's names for JSON types in encoding/json's UnmarshalTypeError.
_GO_JSON = {"integer": "number", "number": "number", "boolean": "bool", "string": "string",
            "array": "array", "object": "object", "null": "null"}


def _go_type_error(value: Any, field: str, want: str) -> FieldProblem:
    return FieldProblem("", f"json: cannot unmarshal {_GO_JSON[json_type(value)]} into Go struct "
                       f"field ObjectMeta.metadata.{field} of type {want}")


def metadata_problems(meta: Any) -> list[FieldProblem]:
    """kubectl decodes metadata into its typed ObjectMeta before it sends anything: a value
    of the wrong type stops it there, with Go's JSON error and nothing else."""
    if not isinstance(meta, dict):
        return []
    for field in ("name", "namespace", "generateName"):
        if field in meta and meta[field] is not None and not isinstance(meta[field], str):
            return [_go_type_error(meta[field], field, "string")]
    for field in ("labels", "annotations"):
        value = meta.get(field)
        if value is None:
            continue
        if not isinstance(value, dict):
            return [_go_type_error(value, field, "map[string]string")]
        for item in value.values():
            if item is not None and not isinstance(item, str):
                return [_go_type_error(item, field, "string")]
    return []


def _unknown_fields(problems: list[FieldProblem], errors: list[dict[str, Any]]
                    ) -> list[FieldProblem]:
    """The API server's strict decoding: a field the schema does not declare, and every key
    of a mapping where the schema wants no object (pruning sees only unknown keys there).
    These abort the request before validation, so when there are any, they are all."""
    out = [p for p in problems if p.message.startswith("unknown field ")]
    for err in errors:
        value = err.get("input")
        kind = err["type"]
        wanted = _TYPE_ERRORS.get(kind) or ("string" if kind == "enum" else None)
        if isinstance(value, dict) and wanted not in (None, "object"):
            path = _path(tuple(err["loc"]))
            out += [FieldProblem(path, f'unknown field "{path}.{key}"') for key in value]
    return out


def validate(doc: dict[str, Any]) -> list[FieldProblem]:
    """Every problem in one manifest as kubectl and the API server would report it, or an
    empty list when they would admit it."""
    try:
        _model_for(doc)
    except ValueError as exc:
        return [FieldProblem("", str(exc))]
    meta = doc.get("metadata")
    client_side = metadata_problems(meta)
    if client_side:
        return client_side
    found = name_problems(meta.get("name") if isinstance(meta, dict) else None)
    found += label_problems(meta)
    try:
        parse_strict(doc)
    except ValidationError as exc:
        problems = problems_of(exc)
        unknown = _unknown_fields(problems, [dict(e) for e in exc.errors()])
        if unknown:
            return unknown
        found += [p for p in problems if p not in found]
    except ValueError as exc:
        found.append(FieldProblem("", str(exc)))
    return found
