"""CLI subcommands of the pipelines: ``train``, ``validate``, ``predict`` and ``registry``.

``lookalike/cli.py`` wires them in with ``add_subcommands(subparsers)``; each handler is stored as the parser
default ``handler``, takes the parsed namespace, returns an exit code and raises ``LookalikeError`` for user
errors (the CLI prints the message and exits 2). ``python -m lookalike.pipelines.commands ...`` runs them alone.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from typing import Sequence

from lookalike.errors import ConfigError, LookalikeError

__all__ = ["add_subcommands", "split_config_and_overrides", "registry_listing", "main"]

_EXAMPLES = {
    "train": """examples:
  lookalike train                                      # the built-in example (emoji data, a few minutes on CPU)
  lookalike train triplet dataset_root=/data/cars      # a shipped config on your data
  lookalike train my.yaml optimizer.args.lr=3e-4 max_epochs=5
  lookalike train --resume runs/2024-05-01_10-00-00    # continue a stopped run (optionally max_epochs=...)""",
    "validate": """examples:
  lookalike validate runs/2024-05-01_10-00-00          # a run's config and checkpoints/best.ckpt
  lookalike validate my.yaml checkpoint=runs/x/checkpoints/best.ckpt""",
    "predict": """examples:
  lookalike predict runs/2024-05-01_10-00-00 predict_source=photos/      # a folder of images
  lookalike predict my.yaml checkpoint=best.ckpt predict_source=items.csv # a CSV with a path column""",
}


def split_config_and_overrides(items: Sequence[str]) -> tuple[str | None, list[str]]:
    """``['cfg.yaml', 'a.b=1']`` -> ('cfg.yaml', ['a.b=1']); the config is the one item without '='."""
    configs = [x for x in items if "=" not in x]
    if len(configs) > 1:
        raise ConfigError(f"expected one config and key=value overrides, got several configs: "
                          f"{', '.join(configs)}. Overrides are written key=value.")
    overrides = [x for x in items if "=" in x]
    if configs and items[0] != configs[0]:
        raise ConfigError(f"the config ({configs[0]}) must come before the overrides.")
    return (configs[0] if configs else None), overrides


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("items", nargs="*", metavar="CONFIG|KEY=VALUE",
                        help="a YAML config, a shipped config name (default, triplet, arcface, category_balance) "
                             "or a run folder, then key=value overrides with dotted keys (values are YAML)")


def _run_train(args: argparse.Namespace) -> int:
    from lookalike.pipelines.training import train

    config, overrides = split_config_and_overrides(args.items)
    if args.resume is not None and config is None and args.resume is True:
        raise ConfigError("--resume needs a run folder: lookalike train --resume runs/<run>.")
    train(config, overrides, resume=args.resume)
    return 0


def _run_validate(args: argparse.Namespace) -> int:
    from lookalike.pipelines.validation import validate

    config, overrides = split_config_and_overrides(args.items)
    validate(config, overrides)
    return 0


def _run_predict(args: argparse.Namespace) -> int:
    from lookalike.pipelines.prediction import predict

    config, overrides = split_config_and_overrides(args.items)
    predict(config, overrides)
    return 0


def _format_default(p: inspect.Parameter) -> str:
    if p.default is inspect.Parameter.empty:
        return f"{p.name} (required)"
    return f"{p.name}={p.default!r}"


def registry_listing(kind: str | None = None) -> str:
    """Every registered component with its import path, arguments and defaults (importing each one)."""
    from lookalike.pipelines.config import INFERRED_ARGS, shipped_configs
    from lookalike.pipelines.registry import REGISTRIES, signature_without

    blocks: dict[str, list[str]] = {}
    for block, registry in REGISTRIES.items():
        blocks.setdefault(registry.kind, []).append(block)
    if kind is not None and kind not in blocks and kind not in REGISTRIES:
        raise ConfigError(f"registry: unknown kind {kind!r}; kinds: {', '.join(blocks)}.")
    lines: list[str] = []
    for registry_kind, block_names in blocks.items():
        if kind is not None and kind != registry_kind and kind not in block_names:
            continue
        registry = REGISTRIES[block_names[0]]
        inferred = INFERRED_ARGS.get(block_names[0], {})
        lines.append(f"{registry_kind}  (config: {', '.join(block_names)})")
        for name in registry.names():
            entry = registry.entry(name)
            lines.append(f"  {name:<26} {entry.target}" + (f"  [needs {entry.requires}]" if entry.requires else ""))
            try:
                _, fixed = registry.resolve(name, name)
                fn = registry.signature_callable(name, name)
                params = [p for p in signature_without(fn, fixed).parameters.values()
                          if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
                shown = [_format_default(p) + (" [inferred]" if p.name in inferred else "") for p in params]
                lines.append("      " + (", ".join(shown) if shown else "(no arguments)"))
            except LookalikeError as exc:
                lines.append(f"      (not available: {str(exc).splitlines()[0]})")
        lines.append("")
    if kind is None:
        lines.append("shipped configs: " + ", ".join(shipped_configs()))
        lines.append("your own component: name: my_package.module:MyClass (its arguments under args)")
    return "\n".join(lines)


def _run_registry(args: argparse.Namespace) -> int:
    print(registry_listing(args.kind))
    return 0


def _run_zoo(args: argparse.Namespace) -> int:
    from lookalike.models.zoo import zoo_listing

    print(zoo_listing())
    return 0


def add_subcommands(subparsers) -> None:
    """Adds train, validate, predict, registry and zoo to an argparse subparsers object."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser("train", help="train an extractor from a config", epilog=_EXAMPLES["train"],
                              formatter_class=fmt)
    _add_config_args(p)
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="RUN_DIR_OR_CKPT",
                   help="continue a run from its checkpoints/last.ckpt (a run folder or a .ckpt file)")
    p.set_defaults(handler=_run_train)

    p = subparsers.add_parser("validate", help="retrieval metrics of a checkpoint on a dataset",
                              epilog=_EXAMPLES["validate"], formatter_class=fmt)
    _add_config_args(p)
    p.set_defaults(handler=_run_validate)

    p = subparsers.add_parser("predict", help="embeddings of a CSV or a folder of images to .npy",
                              epilog=_EXAMPLES["predict"], formatter_class=fmt)
    _add_config_args(p)
    p.set_defaults(handler=_run_predict)

    p = subparsers.add_parser("registry", help="list the components a config can name, with their arguments")
    p.add_argument("kind", nargs="?", default=None,
                   help="only this kind (extractor, sampler, criterion, miner, optimizer, scheduler, logger, "
                        "transforms)")
    p.set_defaults(handler=_run_registry)

    p = subparsers.add_parser("zoo", help="list the pretrained weights by name: network, size, licence, whether "
                                          "they load here without network")
    p.set_defaults(handler=_run_zoo)


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point (``python -m lookalike.pipelines.commands``): user errors -> message, exit 2."""
    parser = argparse.ArgumentParser(prog="lookalike")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_subcommands(subparsers)
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except LookalikeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
