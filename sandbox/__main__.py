"""``python -m sandbox``: the demo (sandbox/demo.py). Options only; see ``--help``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sandbox.demo import Options, main


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox",
        description="Run the bridge against local stand-ins for neetoChat and Microsoft 365 and play a conversation.",
    )
    parser.add_argument("--port", type=int, default=3978, help="the bridge's port (0: any free port; default 3978)")
    parser.add_argument("--neeto-port", type=int, default=4010, help="the neetoChat sandbox's port (default 4010)")
    parser.add_argument("--ms-port", type=int, default=4020, help="the Microsoft 365 sandbox's port (default 4020)")
    parser.add_argument(
        "--page-port", type=int, default=None,
        help="the sandbox page's port (0: any free port; default 4000, or any free port when 4000 is taken)",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=Path("data/demo"), help="the bridge's DATA_DIR (default ./data/demo)"
    )
    parser.add_argument("--once", action="store_true", help="stop after the scripted conversation")
    args = parser.parse_args(argv)
    return Options(
        port=args.port, neeto_port=args.neeto_port, ms_port=args.ms_port, data_dir=args.data_dir, once=args.once,
        page_port=args.page_port,
    )


if __name__ == "__main__":
    sys.exit(main(parse_args()))
