"""The `lookalike` command: check-data, the pipelines (train, validate, predict, registry, index, ...) and serve.

User errors (bad data, bad config, bad checkpoint) print one message and exit with code 2; no traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lookalike import __version__
from lookalike.errors import LookalikeError

__all__ = ["main", "build_parser"]


def _run_check_data(args: argparse.Namespace) -> int:
    from lookalike.data.validation import check_dataset, format_summary

    summary = check_dataset(
        args.dataset_root,
        args.csv,
        check_images="decode" if args.decode else args.images,
        queries_without_gallery="drop" if args.drop_queries_without_gallery else "error",
        max_pixels="default" if args.max_pixels is None else (args.max_pixels or None),
    )
    print(format_summary(summary))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="lookalike", description="Metric learning for images and texts.")
    parser.add_argument("--version", action="version", version=f"lookalike {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = subparsers.add_parser("check-data", help="validate a dataset CSV and its images (or texts)")
    check.add_argument("dataset_root", help="folder holding the CSV (paths in it are relative to this folder)")
    check.add_argument("--csv", default="df.csv", help="CSV file name inside the dataset root (default: df.csv)")
    check.add_argument("--images", choices=("none", "exists", "quick", "decode"), default="quick",
                       help="image check: quick (default: header, pixel limit and a reduced decode, cached by "
                            "path+mtime+size), exists, decode (full decode) or none")
    check.add_argument("--decode", action="store_true", help="same as --images decode")
    check.add_argument("--max-pixels", type=int, default=None, metavar="N",
                       help="refuse images with more than N pixels (default: $LOOKALIKE_MAX_PIXELS or 50000000; "
                            "0 = no limit)")
    check.add_argument("--drop-queries-without-gallery", action="store_true",
                       help="drop queries whose label has no other gallery item (with a warning) instead of failing")
    check.set_defaults(handler=_run_check_data)

    from lookalike.pipelines.commands import add_subcommands

    add_subcommands(subparsers)
    from lookalike.serve.command import add_serve_subcommand

    add_serve_subcommand(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; user errors print `error: <message>` on stderr and return 2; Ctrl-C returns 130."""
    from lookalike.pipelines.commands import parse_args

    args = parse_args(build_parser(), argv)
    try:
        return int(args.handler(args))
    except LookalikeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:  # a training run says how to continue it
        print(f"interrupted: {interrupt}" if str(interrupt) else "interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
