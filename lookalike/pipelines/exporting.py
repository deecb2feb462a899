"""The export pipeline: a run folder's best checkpoint -> an ONNX file (``lookalike.export.to_onnx``), with the
input size and normalisation of the run's validation transforms, checked on a sample of the run's validation
images (``<run folder>/export/model.onnx`` + ``model.json`` + ``model.parity.json`` by default)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

from lookalike.errors import CheckpointError, ConfigError, LookalikeError, unknown_choice
from lookalike.pipelines.config import load_config
from lookalike.pipelines.embedders import DEFAULT_ONNX_NAME
from lookalike.pipelines.runs import extractor_identity, output_folder

__all__ = ["FORMATS", "EXPORT_OPTIONS", "export", "normalisation_of"]

FORMATS = ("onnx",)
#: ``key=value`` items of ``lookalike export`` that are options of the export, not config overrides
EXPORT_OPTIONS = ("format", "out", "opset", "exporter", "samples")


def normalisation_of(cfg: Mapping) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """(image_size, mean, std) of the run's validation transforms; only the presets an exported file can
    describe (``val``: ImageNet statistics, ``to_tensor``: none) are accepted."""
    from lookalike.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    block = cfg["transforms_val"]
    args = dict(block.get("args") or {})
    size = args.get("image_size", "auto")
    size = cfg["image_size"] if size in ("auto", None) else size
    stats = {"val": (IMAGENET_MEAN, IMAGENET_STD), "to_tensor": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))}
    if block["name"] not in stats:
        raise ConfigError(
            f"transforms_val: {block['name']!r} cannot be recorded in an exported file, which describes its "
            "preprocessing as pad to square, resize to image_size, normalise; export runs whose transforms_val is "
            "'val' or 'to_tensor'.")
    extra = sorted(set(args) - {"image_size"})
    if extra:
        raise ConfigError(f"transforms_val.args: {', '.join(extra)} cannot be recorded in an exported file.")
    mean, std = stats[block["name"]]
    return int(size), tuple(mean), tuple(std)


def _parity_images(cfg: Mapping):
    """The run's validation images (the rows of split ``validation`` of dataset_root/csv)."""
    from lookalike.data import schema
    from lookalike.inference import image_source
    from lookalike.pipelines import loading

    try:
        root = loading.dataset_root(cfg)
        table = loading.load_table(cfg)
        part = loading.split_table(table, schema.SPLIT_VALIDATION, str(root / cfg["csv"]))
    except LookalikeError as exc:
        raise type(exc)(f"export: the parity check embeds the run's validation images, but: {exc} "
                        "(point dataset_root=... at the data if it moved)") from None
    images = image_source(part, root=root)
    images.origin = f"{root / cfg['csv']} (validation)"
    return images


def _split(overrides: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    options, rest = {}, []
    for item in overrides:
        key, _, value = item.partition("=")
        if key.strip() in EXPORT_OPTIONS:
            options[key.strip()] = value.strip()
        else:
            rest.append(item)
    return options, rest


def export(config: Mapping | str | Path | None, overrides: Iterable[str] = ()) -> Path:
    """Exports the extractor of ``config`` (a run folder: its ``checkpoints/best.ckpt``) and returns the file.
    ``overrides`` mixes export options (``format=onnx``, ``out=FILE``, ``opset=N``, ``exporter=dynamo|torchscript``,
    ``samples=N`` parity images) with config overrides (e.g. ``checkpoint=...``, ``dataset_root=...``)."""
    from lookalike.export import to_onnx
    from lookalike.pipelines import builders

    options, overrides = _split(overrides)
    fmt = options.get("format", "onnx")
    if fmt not in FORMATS:
        raise ConfigError(unknown_choice("export format", fmt, FORMATS) +
                          " (TensorRT: build an engine from the ONNX file, see docs/export.md)")
    numbers = {}
    for key in ("opset", "samples"):
        if key in options:
            try:
                numbers[key] = int(options[key])
            except ValueError:
                raise ConfigError(f"{key}={options[key]!r}: expected an integer.") from None
    cfg, source = load_config(config, overrides, pipeline="predict")
    from lookalike.pipelines.loading import refuse_texts

    refuse_texts(cfg, "export (ONNX with an image parity check)")
    if cfg["checkpoint"] is None and source.run_dir is not None:
        best = Path(source.run_dir) / "checkpoints" / "best.ckpt"
        if not best.is_file():
            raise CheckpointError(f"{source.run_dir} has no checkpoints/best.ckpt (the run stopped before its "
                                  "first validation, or this is not a training run folder), so there is nothing "
                                  "to export; pass checkpoint=<file.ckpt> to export another checkpoint.")
        cfg["checkpoint"] = str(best)
    if cfg["checkpoint"] is None and not (cfg["extractor"].get("args") or {}).get("weights"):
        raise CheckpointError("checkpoint is null and the extractor has no weights: exporting random weights is "
                              "refused; give a run folder or checkpoint=<file>.")
    image_size, mean, std = normalisation_of(cfg)
    if "out" in options:
        out = Path(options["out"]).expanduser()
    elif source.run_dir is not None:
        out = Path(source.run_dir) / DEFAULT_ONNX_NAME
    else:
        try:
            out = output_folder(cfg, source, "export", overrides) / DEFAULT_ONNX_NAME.name
        except OSError as exc:
            raise ConfigError(f"output_dir: cannot create a folder in {cfg['output_dir']} ({exc.strerror or exc}); "
                              "pass out=<file.onnx> or a writable output_dir.") from None
    extractor = builders.build_extractor(cfg)
    transform = builders.build_transforms(cfg, "transforms_val")
    path = to_onnx(extractor, out, image_size=image_size, mean=mean, std=std, opset=numbers.get("opset"),
                   exporter=options.get("exporter", "dynamo"), parity_source=_parity_images(cfg),
                   parity_samples=numbers.get("samples", 64), transform=transform,
                   source=extractor_identity(cfg))
    print(f"exported {cfg['extractor']['name']} ({Path(cfg['checkpoint']).name if cfg['checkpoint'] else 'its weights'})"
          f" -> {path} (metadata {path.with_suffix('.json').name}, parity report {path.with_suffix('.parity.json').name})")
    return path
