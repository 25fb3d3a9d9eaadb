"""The ringkeeper.io/v1alpha1 API: the models every CRD is generated from."""

from .campus import CampusSpec, CampusStatus
from .common import API_VERSION, GROUP, VERSION, Condition, ConditionStatus, KindInfo, SpecError
from .drill import DrillSpec, DrillStatus
from .resources import BY_KIND, RESOURCES, Campus, Drill, ReplicationRing, Resource, Satellite
from .ring import ReplicationRingSpec, ReplicationRingStatus
from .satellite import SatelliteSpec, SatelliteStatus

__all__ = [
    "API_VERSION",
    "BY_KIND",
    "GROUP",
    "RESOURCES",
    "VERSION",
    "Campus",
    "CampusSpec",
    "CampusStatus",
    "Condition",
    "ConditionStatus",
    "Drill",
    "DrillSpec",
    "DrillStatus",
    "KindInfo",
    "ReplicationRing",
    "ReplicationRingSpec",
    "ReplicationRingStatus",
    "Resource",
    "Satellite",
    "SatelliteSpec",
    "SatelliteStatus",
    "SpecError",
]
