"""`ringkeeper validate`: offline checks of manifests with the API server's wording.

It reads YAML as kubectl does (a key given twice is an error, not "last one wins")
and judges each object as the API server would admit it (api.validation.validate).
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from ..api.kubectl_yaml import load_manifests
from ..api.validation import validate
from .status_view import safe


def run(files: list[str]) -> int:
    failed = 0
    checked = 0
    for name in files:
        try:
            text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
            docs = load_manifests(text)
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            print(f"{name}: cannot read: {exc}", file=sys.stderr)
            failed += 1
            continue
        for index, doc in enumerate(docs):
            label = f"{name}[{index}]" if len(docs) > 1 else name
            if isinstance(doc, dict) and not str(doc.get("apiVersion", "")).startswith(
                "ringkeeper.io/"
            ):
                continue  # Secrets, Namespaces ... beside our objects are not ours to judge.
            checked += 1
            problems = validate(doc)
            kind = doc.get("kind", "?") if isinstance(doc, dict) else "?"
            meta = doc.get("metadata") if isinstance(doc, dict) else None
            # Names and values come from the file: escaped, so a hostile one cannot
            # rewrite the terminal or forge a "valid" line.
            obj = safe(f"{kind}/{meta.get('name', '?') if isinstance(meta, dict) else '?'}")
            if problems:
                failed += 1
                for p in problems:
                    print(f"{label}: {obj}: {safe(p, double_backslashes=False)}",
                          file=sys.stderr)
            else:
                print(f"{label}: {obj}: valid")
    if checked == 0 and failed == 0:
        print("ringkeeper validate: no Ringkeeper objects found", file=sys.stderr)
        return 1
    return 1 if failed else 0
