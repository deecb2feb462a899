"""``lookalike serve <index dir> [host=127.0.0.1] [port=8000] ...``: load an index folder and serve it.

Options are key=value like the other commands. The write token comes from the ``LOOKALIKE_TOKEN`` environment
variable (never from the command line, where other users of the machine could read it in the process list).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Sequence

from lookalike.errors import ConfigError, unknown_choice

__all__ = ["SERVE_DEFAULTS", "parse_serve_options", "serve", "add_serve_subcommand", "TOKEN_ENV"]

TOKEN_ENV = "LOOKALIKE_TOKEN"
SERVE_DEFAULTS: dict[str, Any] = {"host": "127.0.0.1", "port": 8000, "max_upload_mb": 10.0,
                                  "max_pixels": 40_000_000, "max_text_chars": 2000, "batch_wait_ms": 5.0, "max_batch": 32,
                                  "device": "cpu", "threads": 0, "log_level": "info"}

_EXAMPLES = """examples:
  lookalike serve runs/2024-05-01_10-00-00/index                 # http://127.0.0.1:8000/ (the web page)
  lookalike serve my_index port=9000 max_upload_mb=20
  lookalike serve runs/texts/index                               # an index of texts: the page has a text box
  LOOKALIKE_TOKEN=s3cret lookalike serve my_index host=0.0.0.0   # writes need 'Authorization: Bearer s3cret'"""


def parse_serve_options(items: Sequence[str]) -> dict[str, Any]:
    """``['port=9000', ...]`` -> the options, typed like their defaults; unknown keys and bad values are a
    ``ConfigError`` naming the key."""
    options = dict(SERVE_DEFAULTS)
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"serve: expected key=value options after the index folder, got {item!r}.")
        if key not in SERVE_DEFAULTS:
            raise ConfigError("serve: " + unknown_choice("option", key, SERVE_DEFAULTS))
        kind = type(SERVE_DEFAULTS[key])
        try:
            options[key] = kind(value)
        except ValueError:
            raise ConfigError(f"serve: {key}={value!r} is not {'an integer' if kind is int else 'a number'}.") from None
    if not 0 <= options["port"] <= 65535:
        raise ConfigError(f"serve: port={options['port']} is not a port number (0-65535).")
    if options["threads"] < 0:
        raise ConfigError(f"serve: threads must be >= 0 (0 = torch's default), got {options['threads']}.")
    for key in ("max_upload_mb", "max_pixels", "max_text_chars", "max_batch"):
        if options[key] <= 0:
            raise ConfigError(f"serve: {key} must be positive, got {options[key]}.")
    if options["batch_wait_ms"] < 0:
        raise ConfigError(f"serve: batch_wait_ms must be >= 0, got {options['batch_wait_ms']}.")
    return options


def serve(index_dir: str | Path, **options: Any) -> None:
    """Loads the index folder and serves it with uvicorn until interrupted (options: ``SERVE_DEFAULTS``)."""
    try:
        import uvicorn
    except ImportError:
        raise ConfigError('serve needs FastAPI and uvicorn: pip install "lookalike[serve]".') from None
    from lookalike.pipelines.indexing import open_index
    from lookalike.serve.app import create_app

    opts = {**SERVE_DEFAULTS, **options}
    if opts["threads"] > 0:  # on a crowded CPU one thread per model call beats threads waiting for each other
        import torch

        torch.set_num_threads(opts["threads"])
    index = open_index(index_dir, device=opts["device"])
    token = os.environ.get(TOKEN_ENV) or None
    app = create_app(index, token=token, max_upload_mb=opts["max_upload_mb"], max_pixels=opts["max_pixels"],
                     batch_wait_ms=opts["batch_wait_ms"], max_batch=opts["max_batch"],
                     max_text_chars=opts["max_text_chars"])
    where = f"http://{opts['host']}:{opts['port']}/"
    print(f"serving {len(index)} items of {index_dir} at {where} (writes "
          f"{'need the token in ' + TOKEN_ENV if token else 'are open: set ' + TOKEN_ENV + ' to require a token'})",
          flush=True)
    if opts["host"] not in ("127.0.0.1", "localhost", "::1") and not token:
        print(f"warning: listening on {opts['host']} without a token: anyone who can reach this port can add and "
              f"delete items. Set {TOKEN_ENV}.", flush=True)
    uvicorn.run(app, host=opts["host"], port=opts["port"], log_level=opts["log_level"], access_log=False)


def _run_serve(args: argparse.Namespace) -> int:
    serve(args.index_dir, **parse_serve_options(args.options))
    return 0


def add_serve_subcommand(subparsers) -> None:
    """Adds ``serve`` to an argparse subparsers object."""
    p = subparsers.add_parser("serve", help="serve an index: a search API and a web page (FastAPI + uvicorn)",
                              epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("index_dir", help="an index folder written by 'lookalike index'")
    p.add_argument("options", nargs="*", metavar="KEY=VALUE",
                   help="host (default 127.0.0.1), port (8000), max_upload_mb (10), max_pixels (40000000), "
                        "max_text_chars (2000; an index of texts), "
                        "batch_wait_ms (5), max_batch (32; 1 = no micro-batching), device (cpu), threads (torch threads; 0 = "
                        "torch's default), log_level (info)")
    p.set_defaults(handler=_run_serve)
