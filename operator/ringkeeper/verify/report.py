"""Writing and reading verification reports: JSON for machines and repair, text for people."""

from __future__ import annotations

from pathlib import Path

from ..core.verify_report import Report, render_text


def write_report(report: Report, json_path: Path | str,
                 text_path: Path | str | None = None) -> tuple[Path, Path]:
    """Write the JSON report and the readable table (default: the JSON path with .txt)."""
    jp = Path(json_path)
    tp = Path(text_path) if text_path is not None else jp.with_suffix(".txt")
    jp.parent.mkdir(parents=True, exist_ok=True)
    jp.write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    tp.write_text(render_text(report), encoding="utf-8")
    return jp, tp


def load_report(json_path: Path | str) -> Report:
    """A report written by `write_report`, e.g. to repair from it later."""
    return Report.model_validate_json(Path(json_path).read_text(encoding="utf-8"))
