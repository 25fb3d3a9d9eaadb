from __future__ import annotations

import json
from pathlib import Path

import pytest

from ringkeeper.devcluster import faults


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("a=b", {"a": "b"}, id="one"),
        pytest.param("ringkeeper.io/campus=zhaohui, role=primary",
                     {"ringkeeper.io/campus": "zhaohui", "role": "primary"}, id="two"),
    ],
)
def test_parse_selector(text: str, expected: dict[str, str]) -> None:
    assert faults.parse_selector(text) == expected


@pytest.mark.parametrize("text", ["a", "=b", "a==b"], ids=["no-value", "no-key", "double-eq"])
def test_parse_selector_rejects(text: str) -> None:
    with pytest.raises(faults.FaultError, match="key=value"):
        faults.parse_selector(text)


def test_matching_pods_by_labels(tmp_path: Path) -> None:
    for name, labels in (("a-0", {"campus": "a", "role": "primary"}),
                         ("a-1", {"campus": "a"}), ("b-0", {"campus": "b"})):
        d = tmp_path / "pods" / f"ns_{name}_x"
        d.mkdir(parents=True)
        (d / "pod.json").write_text(json.dumps(
            {"namespace": "ns", "name": name, "podIP": "127.1.0.9", "labels": labels}))
        (d / "db.pid").write_text("123")
    assert faults.matching_pods(tmp_path, "ns", "campus=a") == ["a-0", "a-1"]
    assert faults.matching_pods(tmp_path, "ns", "campus=a,role=primary") == ["a-0"]
    assert faults.matching_pods(tmp_path, "other", "campus=a") == []
