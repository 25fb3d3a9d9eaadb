"""Whole objects (apiVersion, kind, metadata, spec, status) of every Ringkeeper kind."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .campus import CAMPUS, CampusSpec, CampusStatus
from .common import KindInfo, ObjectMeta, SpecError
from .drill import DRILL, DrillSpec, DrillStatus
from .ring import RING, ReplicationRingSpec, ReplicationRingStatus
from .satellite import SATELLITE, SatelliteSpec, SatelliteStatus


class Resource(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    info: ClassVar[KindInfo]

    api_version: Literal["ringkeeper.io/v1alpha1"] = Field(
        default="ringkeeper.io/v1alpha1", alias="apiVersion"
    )
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)

    @model_validator(mode="after")
    def _root_rules(self) -> Resource:
        for rule in self.info.root_rules:
            if rule.check is not None and not rule.check(self):
                raise SpecError("metadata.name", rule.message)
        return self

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class Campus(Resource):
    info: ClassVar[KindInfo] = CAMPUS
    kind: Literal["Campus"] = "Campus"
    spec: CampusSpec
    status: CampusStatus | None = None


class ReplicationRing(Resource):
    info: ClassVar[KindInfo] = RING
    kind: Literal["ReplicationRing"] = "ReplicationRing"
    spec: ReplicationRingSpec
    status: ReplicationRingStatus | None = None


class Satellite(Resource):
    info: ClassVar[KindInfo] = SATELLITE
    kind: Literal["Satellite"] = "Satellite"
    spec: SatelliteSpec
    status: SatelliteStatus | None = None


class Drill(Resource):
    info: ClassVar[KindInfo] = DRILL
    kind: Literal["Drill"] = "Drill"
    spec: DrillSpec
    status: DrillStatus | None = None


RESOURCES: tuple[type[Resource], ...] = (Campus, ReplicationRing, Satellite, Drill)
BY_KIND: dict[str, type[Resource]] = {r.info.kind: r for r in RESOURCES}
