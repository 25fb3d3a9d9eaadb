"""Building blocks shared by every Ringkeeper kind.

The models here are the single source of truth for the CRDs: ``crdgen`` turns
their JSON schema into structural OpenAPI, and the cross-field ``Rule`` objects
become CEL ``x-kubernetes-validations``. Each rule carries its own Python check,
so a manifest validated from Python fails with the very sentence the API
server would print at admission.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from ...base import cron

GROUP = "ringkeeper.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Kubernetes quantities ("500m", "2Gi", "1.5"), by apimachinery's grammar: a number with
# at most one point, then one binary-SI, decimal-SI or exponent suffix. A looser pattern
# admitted "1.2.3", which the API server then refused in the StatefulSet (a 500).
QUANTITY_PATTERN = (
    r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?$"
)
# DNS-1123 label: names that become parts of Pod, Service and Secret names.
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def _field_rule(rule: str, message: str, check: Callable[[str], bool]) -> Any:
    """A CEL rule on a string field (``self`` is the string) and its Python twin, so a
    reusable field type carries its own admission check. The twin raises SpecError with
    the rule's message, which api.validation prints as the API server does."""

    def validate(value: str) -> str:
        if not check(value):
            raise SpecError("", message)
        return value

    return (Field(json_schema_extra={"x-kubernetes-validations": [
        {"rule": rule, "message": message, "reason": "FieldValueInvalid"}]}),
        AfterValidator(validate))


# Five-field cron or an @-macro, in each field's range. CEL cannot parse cron, so
# admission checks this pattern; the operator parses the schedule on first sight and
# reports what the pattern cannot see (a 31st of February) in a condition.
CronSchedule = Annotated[
    str, Field(max_length=100, examples=["0 3 * * *"]),
    *_field_rule(f"self.matches('{cron.ADMISSION_PATTERN}')", cron.ADMISSION_MESSAGE,
                 cron.admitted),
]
# An IANA time zone for a schedule. Admission checks a conservative shape (CEL has no zone
# database); the Python twin also asks zoneinfo, so `ringkeeper validate` and the operator
# refuse a well-shaped name the database lacks (Asia/Shangai).
TimeZoneName = Annotated[
    str, Field(max_length=64, examples=["Asia/Shanghai"]),
    *_field_rule(f"self.matches('{cron.TIME_ZONE_PATTERN}')",
                 "must be an IANA time zone name such as Asia/Shanghai or UTC",
                 lambda s: cron.time_zone_problem(s) is None),
]
# Control characters (C0, DEL, C1: ANSI escapes start with ESC or CSI) in a name shown
# on terminals and dashboards would let a spec rewrite what an operator reads.
CONTROL_CHARACTERS = "[\\x00-\\x1f\\x7f-\\x9f]"
DISPLAY_NAME_MESSAGE = (
    "must not contain control characters (newlines, tabs, ANSI escape sequences): it is "
    "shown on terminals and dashboards"
)
DisplayName = Annotated[
    str,
    *_field_rule(f"!self.matches('{CONTROL_CHARACTERS}')", DISPLAY_NAME_MESSAGE,
                 lambda s: not any(unicodedata.category(c) == "Cc" for c in s)),
]

Quantity = Annotated[str, Field(pattern=QUANTITY_PATTERN, examples=["2Gi"])]
DnsLabel = Annotated[str, Field(pattern=DNS_LABEL_PATTERN, min_length=1, max_length=63)]


class SpecError(ValueError):
    """A rule broken by a manifest: a field path and a sentence that says what to do."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


@dataclass(frozen=True)
class Rule:
    """One cross-field rule, written once for both the API server and Python.

    ``cel`` runs at admission with ``self`` bound to the object the rule is
    attached to; ``check`` is its Python twin over the validated model and
    returns False when the rule is broken. ``message_for`` may build a more
    specific sentence from the model; the CEL side then uses ``message_expression``.
    ``transition`` rules compare with ``oldSelf`` and can only run at admission.
    """

    cel: str
    message: str
    field_path: str | None = None
    check: Callable[[Any], bool] | None = None
    reason: str | None = None
    transition: bool = False

    def to_cel(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.cel, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        if self.reason:
            out["reason"] = self.reason
        return out


class ApiModel(BaseModel):
    """Base of every spec and status model: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_assignment=False,
        use_enum_values=True,
    )

    # Cross-field rules attached to this object; crdgen emits them as CEL.
    rules: ClassVar[tuple[Rule, ...]] = ()

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler.resolve_ref_schema(handler(core_schema))
        if cls.rules:
            schema["x-kubernetes-validations"] = [r.to_cel() for r in cls.rules]
        return schema

    @model_validator(mode="after")
    def _check_rules(self) -> ApiModel:
        for rule in type(self).rules:
            if rule.check is None or rule.transition:
                continue
            if not rule.check(self):
                raise SpecError(rule.field_path or "", rule.message)
        return self

    def to_wire(self) -> dict[str, Any]:
        """The JSON-ready dict Kubernetes expects (aliases, no unset optionals)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(ApiModel):
    """A Kubernetes-style condition, as in metav1.Condition."""

    type: str = Field(max_length=316, description="Condition type, e.g. Ready.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        default="Unknown",
        max_length=1024,
        description="One CamelCase word saying why the condition last changed.",
    )
    message: str = Field(default="", max_length=32768, description="A sentence for humans.")
    last_transition_time: datetime | None = Field(
        default=None, description="When status last changed."
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation this condition was set for."
    )


def conditions_field() -> Any:
    """Conditions are a list keyed by type, so server-side apply merges them per type."""
    return Field(
        default_factory=list,
        max_length=32,
        description="Current state, one entry per condition type.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )


class ResourceList(ApiModel):
    cpu: Quantity | None = Field(default=None, description="CPU, e.g. 500m or 2.")
    memory: Quantity | None = Field(default=None, description="Memory, e.g. 4Gi.")


class Resources(ApiModel):
    """Compute resources of a database container (requests and limits)."""

    requests: ResourceList | None = None
    limits: ResourceList | None = None


class Storage(ApiModel):
    size: Quantity = Field(default="10Gi", description="Size of each instance's data volume.")
    storage_class: str | None = Field(
        default=None, description="StorageClass of the volume claims; the cluster default if unset."
    )


class LocalObjectReference(ApiModel):
    name: DnsLabel = Field(description="Name of the object in the same namespace.")


class SecretKeyReference(ApiModel):
    name: DnsLabel = Field(description="Secret name in the same namespace.")
    key: str = Field(default="password", min_length=1, description="Key inside the Secret.")


class ObjectMeta(BaseModel):
    """The parts of metadata Ringkeeper reads; everything else is kept as is."""

    model_config = ConfigDict(extra="allow")
    name: str | None = None
    namespace: str | None = None
    generation: int | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class EngineName(StrEnum):
    POSTGRESQL = "postgresql"
    KINGBASE = "kingbase"


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    type: Literal["string", "integer", "number", "boolean", "date"]
    json_path: str
    description: str = ""
    priority: int = 0


@dataclass(frozen=True)
class KindInfo:
    """CRD metadata a kind carries beside its schema."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    description: str
    printer_columns: tuple[PrinterColumn, ...]
    categories: tuple[str, ...] = ("ringkeeper",)
    # Rules on the whole object (may read metadata.name); checked by the resource model.
    root_rules: tuple[Rule, ...] = ()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


AGE_COLUMN = PrinterColumn("Age", "date", ".metadata.creationTimestamp")


# Service names must be DNS-1035 labels (a letter first); other derived names (Jobs,
# slots, origins) need DNS-1123 labels. The API server itself only asks a custom object's
# name to be a DNS-1123 subdomain, which allows dots that no derived name may carry.
DNS_1035_LABEL_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
_NAME_KINDS = {
    "Campus": (DNS_1035_LABEL_PATTERN, "a DNS-1035 label (lowercase letters, digits and '-', "
               "starting with a letter and ending with a letter or digit)"),
    "Satellite": (DNS_1035_LABEL_PATTERN, "a DNS-1035 label (lowercase letters, digits and "
                  "'-', starting with a letter and ending with a letter or digit)"),
}
# A Campus's name where another object names one (a Drill's target.campus): the shape and
# length a Campus's own metadata.name must have (name_length_rule("Campus", 40, ...)).
CAMPUS_NAME_LIMIT = 40
CampusName = Annotated[str, Field(pattern=DNS_1035_LABEL_PATTERN, min_length=1,
                                  max_length=CAMPUS_NAME_LIMIT)]
_LABEL = (DNS_LABEL_PATTERN, "a DNS-1123 label (lowercase letters, digits and '-', starting "
          "and ending with a letter or digit)")


def name_length_rule(kind: str, limit: int, why: str) -> Rule:
    """Names feed Pod, Service and label names, which Kubernetes caps at 63 characters and
    allows no dots or underscores in: length and shape are checked in one rule."""
    pattern, shape = _NAME_KINDS.get(kind, _LABEL)
    return Rule(
        cel=f"size(self.metadata.name) <= {limit} && self.metadata.name.matches('{pattern}')",
        message=f"metadata.name must be at most {limit} characters and {shape}: {why}",
        check=lambda obj: obj.metadata.name is None or (
            len(obj.metadata.name) <= limit and re.fullmatch(pattern, obj.metadata.name)
            is not None),
        reason="FieldValueInvalid",
    )


_QUANTITY_SUFFIXES = {
    "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}


def parse_quantity(text: str) -> float:
    """A Kubernetes quantity ("50Gi", "1.5G", "500m") as a plain number."""
    m = re.fullmatch(r"([0-9.]+)(m|[kMGTPE]i?|)", text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a quantity such as 50Gi or 1G")
    number, suffix = m.groups()
    if suffix == "m":
        return float(number) / 1000
    return float(number) * _QUANTITY_SUFFIXES[suffix]
