from __future__ import annotations

import json
from pathlib import Path

import pytest

from ringkeeper_devcluster import faults


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


def test_signal_tree_reaches_children_that_left_the_process_group() -> None:
    """PostgreSQL backends call setsid(); a container kill must still take them."""
    import contextlib
    import os
    import signal
    import subprocess
    import time

    parent = subprocess.Popen(["sh", "-c", "sleep 60 & setsid sleep 60 & wait"],
                              start_new_session=True)
    try:
        # Wait for the state, not for a count: the forked child shows up in the
        # tree before it has run setsid(), so three processes alone are not enough.
        def sessions_of(pids: list[int]) -> set[int]:
            found = set()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    found.add(os.getsid(pid))
            return found

        deadline = time.monotonic() + 5
        tree = faults.process_tree(parent.pid)
        while ((len(tree) < 3 or len(sessions_of(tree)) < 2)
               and time.monotonic() < deadline):
            time.sleep(0.05)
            tree = faults.process_tree(parent.pid)
        assert len(tree) == 3, tree
        assert len(sessions_of(tree)) == 2, "one child runs in a session of its own"
        faults.signal_tree(parent.pid, signal.SIGKILL)
        parent.wait(timeout=5)
        time.sleep(0.2)
        for pid in tree[1:]:
            stat = Path(f"/proc/{pid}/stat")
            assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    finally:
        faults.signal_tree(parent.pid, signal.SIGKILL)
