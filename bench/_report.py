"""docs/performance.md: one section per benchmark, each between its own markers, so a
benchmark rewrites its section and leaves the others (and any text outside) alone."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PERFORMANCE_MD = ROOT / "docs" / "performance.md"

PREAMBLE = """# Performance

Measured by `python -m bench` (the benchmarks in `bench/`), which runs the bridge in-process
against the sandboxes (`sandbox/`) on local ports. Each benchmark owns one section below,
between its `<!-- bench:… -->` markers, and rewrites only that section when it runs; text
outside the markers is kept.
"""


def begin_marker(name: str) -> str:
    return f"<!-- bench:{name}:begin (written by `python -m bench.{name}`; edits inside are overwritten) -->"


def end_marker(name: str) -> str:
    return f"<!-- bench:{name}:end -->"


def write_section(name: str, body: str, path: Path = PERFORMANCE_MD) -> Path:
    """Replace benchmark ``name``'s section of ``path`` with ``body`` (appended at the end
    the first time; the file is created with a short preamble if missing)."""
    text = path.read_text() if path.exists() else PREAMBLE
    section = f"{begin_marker(name)}\n{body.strip()}\n{end_marker(name)}\n"
    begin = text.find(f"<!-- bench:{name}:begin")
    end = text.find(end_marker(name))
    if begin != -1 and end > begin:
        text = text[:begin] + section + text[end + len(end_marker(name)) :].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def machine() -> str:
    """Where the figures were measured: platform, CPUs, Python, the code's commit."""
    return (
        f"{platform.platform()}, {os.cpu_count()} CPUs ({platform.machine()}), "
        f"Python {platform.python_version()}, code at {commit()}"
    )


def commit() -> str:
    """The checked-out commit, with "+ uncommitted changes" when the tree differs from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "an unknown commit"
    return f"{head}{' + uncommitted changes' if dirty else ''}"


def today() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows])
