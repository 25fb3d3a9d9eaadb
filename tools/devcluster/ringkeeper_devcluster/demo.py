"""`python -m ringkeeper_devcluster.demo`: the failover part of `make demo`.

Writes through the campus's -rw endpoint, kills the primary, and prints who
took over, how long writes were refused, and how many acknowledged commits
were lost (the answer must be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from ringkeeper.adapters.kube import api_client

from .control_plane import default_state_dir
from .workload import Writer, kill_primary_round, wait_ready


def say(text: str) -> None:
    print(f"    [{time.strftime('%H:%M:%S')}] {text}", flush=True)


async def main(args: argparse.Namespace) -> int:
    async with await api_client() as api:
        say(f"waiting for campus {args.namespace}/{args.campus} to be Ready")
        st = await wait_ready(api, args.namespace, args.campus, timeout=240, settle=True)
        say(f"primary {st['currentPrimary']}, {st.get('readyInstances')} instances ready")
        writer = Writer(api, args.namespace, args.campus, rate=args.rate)
        task = asyncio.create_task(writer.run())
        try:
            await asyncio.sleep(args.warmup)
            say(f"{len(writer.acked)} commits acknowledged through {args.campus}-rw; "
                f"SIGKILL the primary {st['currentPrimary']}")
            r = await kill_primary_round(api, Path(args.state_dir), args.namespace,
                                         args.campus, writer)
            say(f"{r.new} promoted; writes through -rw again after {r.rto_s:.1f}s")
            await asyncio.sleep(2)
        finally:
            writer.stopping = True
            await task
        final = await wait_ready(api, args.namespace, args.campus, timeout=180)
        say(f"{r.old} rejoined as a replica: {final.get('readyInstances')} instances ready")
    print()
    print(f"summary: old primary {r.old}, new primary {r.new}, RTO {r.rto_s:.1f}s "
          f"(kill -> first write through -rw), commits acknowledged {r.acked}, "
          f"lost commits = {r.lost}")
    return 0 if r.lost == 0 else 1


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--namespace", default="demo")
    p.add_argument("--campus", default="zhaohui")
    p.add_argument("--state-dir", default=str(default_state_dir()))
    p.add_argument("--rate", type=float, default=100.0)
    p.add_argument("--warmup", type=float, default=3.0)
    sys.exit(asyncio.run(main(p.parse_args())))


if __name__ == "__main__":
    cli()
