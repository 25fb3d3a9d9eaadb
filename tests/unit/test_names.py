"""One module derives every name; its defaults are the model's."""

from __future__ import annotations

from ringkeeper.api.v1alpha1.campus import CampusSpec
from ringkeeper.core import names


def test_instance_count_defaults_to_the_model() -> None:
    default = CampusSpec.model_fields["instances"].default
    assert names.instance_count({}) == default == 3
    assert names.instance_count({"instances": 5}) == 5
    assert names.instance_count({"instances": None}) == default


def test_instance_names_are_statefulset_ordinals() -> None:
    assert names.instance_names("east", 3) == ["east-0", "east-1", "east-2"]
    assert names.campus_instances("west", {}) == ["west-0", "west-1", "west-2"]


def test_origins_share_one_prefix() -> None:
    origin = names.origin_name("lis", "east")
    assert origin.startswith(names.origin_prefix("lis"))
    assert names.member_of_origin("lis", origin) == "east"
    assert names.member_of_origin("other", origin) is None
