"""``python -m bench [options]``: every benchmark in bench/, one after the other, each
given the same command-line options (e.g. ``--scale 10``) and updating its own section
of docs/performance.md."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import bench


def benchmarks() -> list[str]:
    """Module names of the benchmarks: modules of this package with a ``main``."""
    names = []
    for info in pkgutil.iter_modules(bench.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"bench.{info.name}")
        if callable(getattr(module, "main", None)):
            names.append(module.__name__)
    return sorted(names)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    status = 0
    for name in benchmarks():
        print(f"=== {name}", flush=True)
        status = max(status, importlib.import_module(name).main(argv) or 0)
    return status


if __name__ == "__main__":
    sys.exit(main())
