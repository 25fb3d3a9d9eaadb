"""Start a container as a local process in a private mount namespace.

Each container gets its own mount namespace, so its volumes appear at their
real mountPaths (a PVC at /var/lib/postgresql/data, a Secret at /etc/tls) while
the host sees only folders under the state directory. The process then drops to
the unprivileged pod user with no new privileges and an empty capability set.
Root's home is hidden behind an empty tmpfs except for the Python installation
the programs need, so a pod can read neither the cluster CA key nor kubeconfigs.
"""

from __future__ import annotations

import os
import pwd
import shlex
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

import ringkeeper

STAGE = "/run/ringkeeper-dev/stage"


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class PodUser:
    name: str
    uid: int
    gid: int


def pod_user(name: str) -> PodUser:
    try:
        entry = pwd.getpwnam(name)
    except KeyError as exc:
        raise RuntimeError(
            f"the pod user {name!r} does not exist: create it with `useradd --system "
            f"--no-create-home --shell /usr/sbin/nologin {name}` (make setup does)"
        ) from exc
    return PodUser(name, entry.pw_uid, entry.pw_gid)


def _traversable_by_others(path: Path) -> bool:
    try:
        return bool(path.stat().st_mode & stat.S_IXOTH)
    except OSError:
        return False


def exposures(hidden: str) -> list[str]:
    """Folders under a covered path (root's hidden home, or a volume mounted over /tmp, say)
    that pods still need: the Python installation and the Ringkeeper source."""
    wanted = {sys.base_prefix, sys.prefix, str(Path(ringkeeper.__file__).resolve().parents[1])}
    # The repository root (examples, crds) for demo pods that read them.
    wanted.add(str(Path(ringkeeper.__file__).resolve().parents[2]))
    inside = sorted(p for p in wanted if p.startswith(hidden.rstrip("/") + "/"))
    out: list[str] = []
    for p in inside:
        if not any(p.startswith(o.rstrip("/") + "/") for o in out):
            out.append(p)
    return out


def hidden_homes() -> list[str]:
    """Home folders a pod user cannot traverse; pods get an empty tmpfs there instead."""
    home = Path("/root")
    return [str(home)] if home.exists() and not _traversable_by_others(home) else []


def launch_argv(
    *,
    argv: list[str],
    mounts: list[Mount],
    workdir: str | None,
    user: PodUser,
    groups: list[int],
) -> list[str]:
    """The unshare/sh/setpriv chain that starts one container; the pid stays the same."""
    q = shlex.quote
    lines = ["set -e", f"mkdir -p {STAGE}", f"mount -t tmpfs -o size=1m tmpfs {STAGE}"]
    # Bind every source into the stage first: a later mount (an emptyDir on /tmp, the
    # tmpfs over root's home) may cover the folder a source lives in.
    ordered = sorted(mounts, key=lambda m: m.target.rstrip("/").count("/"))
    moves: list[tuple[str, str, bool]] = []
    for i, m in enumerate(ordered):
        slot = f"{STAGE}/v{i}"
        is_dir = os.path.isdir(m.source)
        lines.append(f"mkdir -p {slot}" if is_dir else f"touch {slot}")
        lines.append(f"mount --bind {q(m.source)} {slot}")
        moves.append((slot, m.target, m.read_only))
    homes = hidden_homes()
    keep: list[str] = []
    for covered in homes + [m.target for m in ordered]:
        for path in exposures(covered):
            if path not in keep and not any(path.startswith(k.rstrip("/") + "/") for k in keep):
                keep.append(path)
    for i, path in enumerate(keep):
        lines.append(f"mkdir -p {STAGE}/h{i} && mount --bind {q(path)} {STAGE}/h{i}")
    for home in homes:
        lines.append(f"mount -t tmpfs -o mode=755,size=1m tmpfs {q(home)}")
    for i, (slot, target, read_only) in enumerate(moves):
        if os.path.isdir(ordered[i].source):
            lines.append(f"mkdir -p {q(target)}")
        else:
            lines.append(f"mkdir -p \"$(dirname {q(target)})\" && touch {q(target)}")
        lines.append(f"mount --move {slot} {q(target)}")
        if read_only:
            lines.append(f"mount -o remount,bind,ro {q(target)}")
    # Put back what the covering mounts hid, once every volume is in place.
    for i, path in enumerate(keep):
        lines.append(f"mkdir -p {q(path)} && mount --move {STAGE}/h{i} {q(path)}")
    if workdir:
        lines.append(f"cd {q(workdir)}")
    group_arg = ",".join(str(g) for g in sorted({user.gid, *groups}))
    lines.append(
        f"exec setpriv --reuid={user.uid} --regid={user.gid} --groups={group_arg} "
        '--no-new-privs --inh-caps=-all --bounding-set=-all -- "$@"'
    )
    script = "\n".join(lines)
    return ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script,
            "container", *argv]


def exec_argv(pid: int, argv: list[str], user: PodUser) -> list[str]:
    """Run a command inside a running container's mount namespace, as the pod user."""
    return ["nsenter", f"--target={pid}", "--mount", "--", "setpriv", f"--reuid={user.uid}",
            f"--regid={user.gid}", "--init-groups", "--no-new-privs", "--", *argv]
