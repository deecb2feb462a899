"""CLI subcommands of the pipelines: ``train``, ``validate``, ``predict``, ``export``, ``registry``, and the
search commands ``index``, ``search``, ``dedup`` and ``export-index``.

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

__all__ = ["add_subcommands", "parse_args", "split_config_and_overrides", "registry_listing", "main"]

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
  lookalike predict my.yaml checkpoint=best.ckpt predict_source=items.csv # a CSV with a path column
  lookalike predict runs/2024-05-01_10-00-00 runtime=onnx predict_source=photos/  # its exported ONNX file""",
    "export": """examples:
  lookalike export runs/2024-05-01_10-00-00                    # -> runs/.../export/model.onnx (+ .json files)
  lookalike export runs/2024-05-01_10-00-00 out=model.onnx opset=18 exporter=torchscript samples=128""",
    "index": """examples:
  lookalike index runs/2024-05-01_10-00-00 source=photos/              # -> runs/2024-05-01_10-00-00/index
  lookalike index runs/x source=items.csv index_dir=items_index backend=faiss_hnsw
  lookalike index runs/x source=items.csv backend=faiss_ivf backend_args='{nlist: 256, nprobe: 32}'""",
    "search": """examples:
  lookalike search runs/x/index query.png                   # top 5 as a table
  lookalike search runs/x/index queries/ top_k=10 format=csv > results.csv
  lookalike search runs/texts/index "grinning face" "cara de perro"   # an index of texts: query texts""",
    "dedup": """examples:
  lookalike dedup runs/x source=photos/ threshold=0.05      # a distance of your choosing
  lookalike dedup runs/x source=photos/ fmr=0.001           # the distance with FMR 0.1% on the validation split
  lookalike dedup runs/x/index threshold=0.05               # the indexed items themselves""",
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
    from lookalike.pipelines.config import shipped_configs

    names = ", ".join(sorted(shipped_configs()))
    parser.add_argument("items", nargs="*", metavar="CONFIG|KEY=VALUE",
                        help=f"a YAML config, a shipped config name ({names}) "
                             "or a run folder, then key=value overrides with dotted keys (values are YAML)")
    parser.add_argument("--trust-config", action="store_true",
                        help="follow import paths (name: module:attr) in a run folder's config.yaml; without it they "
                             "are refused, since a shared run folder could name any code (docs/safety.md)")


def _run_train(args: argparse.Namespace) -> int:
    from lookalike.pipelines.training import train

    config, overrides = split_config_and_overrides(args.items)
    if args.resume is not None and config is None and args.resume is True:
        raise ConfigError("--resume needs a run folder: lookalike train --resume runs/<run>.")
    train(config, overrides, resume=args.resume, trust_config=args.trust_config)
    return 0


def _run_validate(args: argparse.Namespace) -> int:
    from lookalike.pipelines.validation import validate

    config, overrides = split_config_and_overrides(args.items)
    validate(config, overrides, trust_config=args.trust_config)
    return 0


def _run_predict(args: argparse.Namespace) -> int:
    from lookalike.pipelines.prediction import predict

    config, overrides = split_config_and_overrides(args.items)
    predict(config, overrides, trust_config=args.trust_config)
    return 0


def _run_export(args: argparse.Namespace) -> int:
    from lookalike.pipelines.exporting import export

    config, overrides = split_config_and_overrides(args.items)
    export(config, overrides)
    return 0


def _run_index(args: argparse.Namespace) -> int:
    from lookalike.pipelines.indexing import index

    config, overrides = split_config_and_overrides(args.items)
    index(config, overrides)
    return 0


def _options(items: Sequence[str], allowed: dict[str, object], command: str) -> tuple[list[str], dict]:
    """Positional items and ``key=value`` options (YAML values) of a command with a fixed set of options. An item
    whose part before ``=`` is no name (a path, a query text such as "1+1=2" or "a = b") is positional."""
    from lookalike.pipelines.config import yaml_load

    positional, options = [], dict(allowed)
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            positional.append(item)
            continue
        if key not in allowed:
            from lookalike.errors import suggest

            raise ConfigError(f"{command}: unknown option {key!r}{suggest(key, allowed)}; options: "
                              f"{', '.join(allowed)} (a query that holds '=' after a single word goes in a CSV "
                              "file with a text column).")
        options[key] = yaml_load(value)
    return positional, options


def _run_search(args: argparse.Namespace) -> int:
    from lookalike.pipelines.searching import search

    queries, opts = _options(args.items, {"top_k": 5, "format": "table", "device": "cpu"}, "search")
    print(search(args.index_dir, queries, top_k=opts["top_k"], fmt=str(opts["format"]),
                 device=str(opts["device"])))
    return 0


def _run_dedup(args: argparse.Namespace) -> int:
    from lookalike.pipelines.deduplication import dedup

    dedup(args.target, args.items)
    return 0


def _run_export_index(args: argparse.Namespace) -> int:
    from lookalike.pipelines.searching import export_index

    rest, opts = _options(args.items, {"out": None}, "export-index")
    if rest or not opts["out"]:
        raise ConfigError("export-index: give the output file as out=FILE.parquet (and nothing else).")
    export_index(args.index_dir, str(opts["out"]))
    return 0


def _run_train_pairwise(args: argparse.Namespace) -> int:
    from lookalike.pipelines.pairwise import train_pairwise

    config, overrides = split_config_and_overrides(args.items)
    if config is None:
        raise ConfigError("train-pairwise needs a config: lookalike train-pairwise my_pairwise.yaml "
                          "(or extractor_run=runs/<run> overrides after a config file).")
    train_pairwise(config, overrides, resume=args.resume)
    return 0


def _format_default(p: inspect.Parameter) -> str:
    if p.default is inspect.Parameter.empty:
        return f"{p.name} (required)"
    return f"{p.name}={p.default!r}"


def registry_listing(kind: str | None = None) -> str:
    """Every registered component with its import path, arguments and defaults (importing each one)."""
    from lookalike.pipelines.config import shipped_configs
    from lookalike.pipelines.config_schema import INFERRED_ARGS
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
    from lookalike.models.texts import text_models_listing
    from lookalike.models.zoo import zoo_listing

    print(zoo_listing())
    print()
    print(text_models_listing())  # text encoders: model folders from pip packages, not weight files
    return 0


def add_subcommands(subparsers) -> None:
    """Adds train, validate, predict, export, index, search, dedup, export-index, train-pairwise, registry and
    zoo to an argparse subparsers object."""
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

    p = subparsers.add_parser("export", help="export a run's best checkpoint to ONNX, checked against torch",
                              epilog=_EXAMPLES["export"], formatter_class=fmt)
    p.add_argument("items", nargs="*", metavar="RUN|KEY=VALUE",
                   help="a run folder (or config), then format=onnx, out=FILE.onnx, opset=N, "
                        "exporter=dynamo|torchscript, samples=N and any config overrides")
    p.set_defaults(handler=_run_export)

    p = subparsers.add_parser("index", help="embed a folder or CSV with a run's model into a search index",
                              epilog=_EXAMPLES["index"], formatter_class=fmt)
    p.add_argument("items", nargs="*", metavar="RUN|CONFIG KEY=VALUE",
                   help="a run folder (or config), then source=<CSV or folder> [index_dir=DIR] "
                        "[backend=exact|faiss_flat|faiss_ivf|faiss_hnsw] [backend_args={...}] and config overrides")
    p.set_defaults(handler=_run_index)

    p = subparsers.add_parser("search", help="the nearest indexed items of query images (or texts)",
                              epilog=_EXAMPLES["search"], formatter_class=fmt)
    p.add_argument("index_dir", help="an index folder written by `lookalike index`")
    p.add_argument("items", nargs="*", metavar="QUERY|KEY=VALUE",
                   help="query images or folders (an index of texts: query texts, or CSV files with a text "
                        "column), then [top_k=5] [format=table|json|csv] [device=cpu]")
    p.set_defaults(handler=_run_search)

    p = subparsers.add_parser("dedup", help="groups of near-duplicate images (duplicates.csv and a picture)",
                              epilog=_EXAMPLES["dedup"], formatter_class=fmt)
    p.add_argument("target", help="a run folder or config (with source=...), or an index folder")
    p.add_argument("items", nargs="*", metavar="KEY=VALUE",
                   help="source=<folder or CSV>, threshold=D or fmr=F, [out=DIR], config overrides")
    p.set_defaults(handler=_run_dedup)

    p = subparsers.add_parser("export-index", help="an index as a Parquet file (id, embedding, manifest columns)")
    p.add_argument("index_dir", help="an index folder")
    p.add_argument("items", nargs="*", metavar="out=FILE.parquet")
    p.set_defaults(handler=_run_export_index)

    p = subparsers.add_parser("train-pairwise", help="train a pairwise re-ranker on a trained extractor run",
                              epilog="""examples:
  lookalike train-pairwise pairwise.yaml extractor_run=runs/2024-05-01_10-00-00
  lookalike train-pairwise pairwise.yaml run_name=p1 --resume   # continue p1 from its last.ckpt""",
                              formatter_class=fmt)
    p.add_argument("items", nargs="*", metavar="CONFIG|KEY=VALUE",
                   help="a YAML config of the pairwise pipeline (docs/pipelines.md), then key=value overrides")
    p.add_argument("--resume", action="store_true", help="continue the run named by run_name")
    p.set_defaults(handler=_run_train_pairwise)

    p = subparsers.add_parser("registry", help="list the components a config can name, with their arguments")
    p.add_argument("kind", nargs="?", default=None,
                   help="only this kind (extractor, sampler, criterion, miner, optimizer, scheduler, logger, "
                        "transforms)")
    p.set_defaults(handler=_run_registry)

    p = subparsers.add_parser("zoo", help="list the pretrained weights by name: network, size, licence, whether "
                                          "they load here without network")
    p.set_defaults(handler=_run_zoo)


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args`` that also takes ``key=value`` overrides after an option (``train cfg.yaml --resume RUN
    max_epochs=2``): argparse stops filling ``items`` at the first option, so later ones are appended here."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "items") and not any(x.startswith("-") for x in extra):
            args.items = [*args.items, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point (``python -m lookalike.pipelines.commands``): user errors -> message, exit 2;
    Ctrl-C -> exit 130 (with the command that continues an interrupted training run)."""
    parser = argparse.ArgumentParser(prog="lookalike")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_subcommands(subparsers)
    args = parse_args(parser, argv)
    try:
        return int(args.handler(args))
    except LookalikeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"interrupted: {exc}" if str(exc) else "interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
