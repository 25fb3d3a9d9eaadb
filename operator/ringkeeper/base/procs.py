"""Process trees from /proc: what a container (or a server and its backends) consists of.

Why by parent pid and not by process group or session: PostgreSQL backends call setsid(),
so they leave their postmaster's group, and a group kill would let them commit on. The
agent kills its server's tree this way, and the dev cluster's runtime its containers'.
"""

from __future__ import annotations

import contextlib
from collections import deque
from pathlib import Path


def process_tree(root: int) -> list[int]:
    """root and every process below it (root first, then breadth-first)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out: list[int] = []
    todo = deque([root])
    while todo:
        pid = todo.popleft()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out
