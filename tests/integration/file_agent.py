"""The instance agent with its Campus read from a JSON file: local tests run this instead
of `ringkeeper agent`, so the product's command line carries no test switch.

    python3 tests/integration/file_agent.py --campus-file F [agent options]

The file holds the Campus plus what a test drives: pod addresses (`podIPs`), an API
outage (`unreachable`), a cut of single pods from the API (`apiCut`) and API latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from ringkeeper.agent.contact import AgentConfig
from ringkeeper.agent.run import add_arguments, run


class FileCampusSource:
    """A Campus kept in a JSON file, with pod addresses beside it: tests drive it."""

    def __init__(self, path: Path, me: str | None = None) -> None:
        self.path = path
        self.me = me

    async def fetch(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.path.read_text())
        if data.get("unreachable"):
            raise ConnectionError("simulated API partition")
        if self.me is not None and self.me in (data.get("apiCut") or []):
            # This agent alone is cut from the API server: its read hangs until the
            # client's 2 s timeout, as ApiCampusSource's does.
            await asyncio.sleep(2.0)
            raise TimeoutError("simulated API partition of this pod")
        # A slow API server (tests): what an agent does before its answer comes must
        # already be safe.
        latency = data.get("latencySeconds")
        if isinstance(latency, int | float) and latency > 0:
            await asyncio.sleep(min(float(latency), 10.0))
        return data

    async def pod_ip(self, name: str) -> str | None:
        data = json.loads(self.path.read_text())
        ip = (data.get("podIPs") or {}).get(name)
        return str(ip) if ip else None


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="file_agent")
    p.add_argument("--campus-file", required=True, type=Path)
    add_arguments(p)
    args = p.parse_args(argv)
    path: Path = args.campus_file

    def source_for(cfg: AgentConfig) -> FileCampusSource:
        return FileCampusSource(path, cfg.name)

    return run(args, source_for)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
