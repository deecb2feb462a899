"""The dataset CSV: read it, check every rule of the format, and report all problems in one clear message.

Row numbers in messages are CSV line numbers: the header is line 1, the first data row is line 2, so a user
can jump straight to them in an editor (as long as no quoted cell spans several lines).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lookalike.data import schema
from lookalike.data.image_check import CHECK_LEVELS, ImageCheckReport, check_image_files
from lookalike.data.images import MAX_PIXELS_ENV, MaxPixels, image_size
from lookalike.errors import DatasetError, unknown_choice

__all__ = ["DatasetSummary", "load_dataset_table", "check_dataset", "format_summary", "parse_bool"]

_SHOWN = 10  # rows / files / labels named in one message
_TRUE = frozenset({"true", "1", "yes", "y", "t", "1.0"})
_FALSE = frozenset({"false", "0", "no", "n", "f", "0.0"})
CHECK_IMAGES = CHECK_LEVELS  # "none", "exists", "quick", "decode": see lookalike.data.image_check
QUERIES_WITHOUT_GALLERY = ("error", "drop")


@dataclass
class DatasetSummary:
    """What a valid dataset holds, for the check-data report."""

    csv: str
    n_items: int
    n_labels: int
    items_per_split: dict[str, int]
    labels_per_split: dict[str, int]
    n_queries: int
    n_gallery: int
    n_categories: int | None
    warnings: list[str] = field(default_factory=list)
    images: ImageCheckReport | None = None  # what the image check did (level, files, cache hits, largest)
    n_texts: int | None = None  # a text dataset: how many texts were checked


def _lines(mask: np.ndarray | pd.Series) -> str:
    """'CSV lines 2, 7, 9' for the rows where mask is true (the first ten, then a count)."""
    rows = np.flatnonzero(np.asarray(mask)) + 2
    shown = ", ".join(str(r) for r in rows[:_SHOWN])
    more = f" (and {len(rows) - _SHOWN} more)" if len(rows) > _SHOWN else ""
    return f"CSV line{'s' if len(rows) > 1 else ''} {shown}{more}"


def _examples(values) -> str:
    values = list(values)
    shown = ", ".join(str(v) for v in values[:_SHOWN])
    return shown + (f" (and {len(values) - _SHOWN} more)" if len(values) > _SHOWN else "")


def parse_bool(column: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, is_empty, is_invalid) of a column of booleans written as text (true/false, 1/0, yes/no, empty).

    Empty cells are False in `values`; so are invalid ones (which `is_invalid` marks).
    """
    codes, uniques = pd.factorize(column)  # classify the few distinct spellings, not every row; NaN -> code -1
    text = pd.Index([str(u).strip().lower() for u in uniques], dtype=object)
    is_empty = np.append(text == "", True)  # the extra last entry is what code -1 (a missing cell) picks
    is_true = np.append(text.isin(_TRUE), False)
    is_false = np.append(text.isin(_FALSE), False)
    empty, true = is_empty[codes], is_true[codes]
    return true, empty, ~(empty | true | is_false[codes])


class _Problems:
    """Collects one paragraph per problem; raises them all together."""

    def __init__(self, csv_path: Path) -> None:
        self.csv_path = csv_path
        self.items: list[str] = []

    def add(self, message: str) -> None:
        self.items.append(message)

    def raise_if_any(self) -> None:
        if not self.items:
            return
        numbered = "\n".join(f"  {i}. {text}" for i, text in enumerate(self.items, 1))
        noun = "problem" if len(self.items) == 1 else "problems"
        raise DatasetError(f"dataset {self.csv_path} has {len(self.items)} {noun}:\n{numbered}")


def _field_count_problem(csv_path: Path) -> str | None:
    """'CSV lines 3, 9 have 7, 6 fields but the header has 5', for a file pandas refused (error path only)."""
    import csv as csv_module

    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as file:
            reader = csv_module.reader(file)
            header = next(reader, [])
            bad = [(reader.line_num, len(row)) for row in reader if row and len(row) != len(header)]
    except (csv_module.Error, UnicodeDecodeError):
        return None
    if not bad:
        return None
    lines = _examples(line for line, _ in bad)
    counts = _examples(n for _, n in bad)
    return (f"CSV line{'s' if len(bad) > 1 else ''} {lines} ha{'ve' if len(bad) > 1 else 's'} {counts} fields "
            f"but the header has {len(header)}")


def _read_csv(root: Path, csv: str | os.PathLike, modality: str = "image") -> tuple[Path, pd.DataFrame, str]:
    """(CSV path, table of strings, modality resolved to "image" or "text")."""
    if root.is_file():
        raise DatasetError(f"dataset root {root} is a file, but a folder is expected: pass the folder that holds "
                           f"the CSV and the images (here probably {root.parent}), and the CSV's name with --csv")
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} is not a folder; pass the folder that holds the CSV and images")
    csv_path = Path(csv) if Path(csv).is_absolute() else root / csv
    if not csv_path.is_file():
        present = sorted(p.name for p in root.glob("*.csv"))
        hint = f" CSV files in that folder: {', '.join(present)}." if present else " That folder has no CSV file."
        raise DatasetError(f"dataset CSV not found: {csv_path}; pass its name with --csv.{hint}")
    try:
        with warnings.catch_warnings():
            # index_col=False: a row with more fields than the header must not silently become the index
            warnings.simplefilter("error", pd.errors.ParserWarning)
            table = pd.read_csv(csv_path, dtype=str, keep_default_na=False, na_values=[""], index_col=False,
                                encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise DatasetError(f"{csv_path} is empty; it needs a header line and one row per image") from None
    except UnicodeDecodeError as error:
        at = _first_non_utf8(csv_path)  # pandas' error.start counts from the chunk it was decoding
        where = f"byte {at}, {_line_of_byte(csv_path, at)}" if at is not None else "a byte"
        raise DatasetError(f"{csv_path} cannot be parsed as CSV: it is not UTF-8 text ({error.reason} at "
                           f"{where}); save it as UTF-8") from None
    except (pd.errors.ParserError, pd.errors.ParserWarning, ValueError) as error:
        detail = _field_count_problem(csv_path) or str(error).strip().splitlines()[0]
        raise DatasetError(f"{csv_path} cannot be parsed as CSV ({detail}); check quoting and that every "
                           "line has as many commas as the header") from None
    table.columns = [str(c).strip() for c in table.columns]
    modality = _resolve_modality(csv_path, table, modality)
    required = [c if c != schema.PATH else (schema.PATH if modality == "image" else schema.TEXT)
                for c in schema.REQUIRED_COLUMNS]
    missing = [c for c in required if c not in table.columns]
    if missing:
        content = ("path: image path" if modality == "image" else "text: the item's text")
        raise DatasetError(
            f"{csv_path} lacks the required column(s) {', '.join(missing)}; found columns "
            f"{', '.join(table.columns)}. Required: {', '.join(required)} "
            f"(label: int, {content}, split: train|validation, is_query/is_gallery: true|false)."
        )
    if len(table) == 0:
        raise DatasetError(f"{csv_path} has a header but no rows")
    return csv_path, table, modality


def _resolve_modality(csv_path: Path, table: pd.DataFrame, modality: str) -> str:
    """"image" or "text": as asked, or for "auto" text when the table has a text column and no path column."""
    if modality not in schema.MODALITIES:
        raise DatasetError(unknown_choice("modality", modality, schema.MODALITIES))
    if modality != "auto":
        return modality
    if schema.PATH not in table.columns and schema.TEXT not in table.columns:
        raise DatasetError(f"{csv_path} has neither a 'path' column (images) nor a 'text' column (texts); found "
                           f"columns {', '.join(table.columns)}. Name the column that holds the items 'path' "
                           "(image paths) or 'text' (the texts themselves).")
    return "text" if schema.PATH not in table.columns else "image"


def _first_non_utf8(path: Path) -> int | None:
    """The file offset of the first byte that is not UTF-8 (read in chunks), or None."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    try:
        with open(path, "rb") as file:
            while chunk := file.read(1 << 20):
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as error:  # error.object = bytes held back from the last chunk + chunk
                    return offset - (len(error.object) - len(chunk)) + error.start
                offset += len(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError as error:  # a sequence cut off by the end of the file
        return offset - len(error.object) + error.start
    except OSError:
        return None
    return None


def _line_of_byte(path: Path, offset: int) -> str:
    """'CSV line N' of a byte offset (for a decoding error)."""
    try:
        with open(path, "rb") as file:
            line = file.read(offset).count(b"\n") + 1
    except OSError:
        return "line unknown"
    return f"CSV line {line}"


def _exact_integer(text: str) -> int | None:
    """The integer a cell spells exactly ("4611686018427387904", "7.0"), else None (for values past 2**53)."""
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        import decimal

        value = decimal.Decimal(text)
    except (ArithmeticError, ValueError):
        return None
    return int(value) if value.is_finite() and value == value.to_integral_value() else None


def _check_labels(table: pd.DataFrame, problems: _Problems) -> tuple[np.ndarray, np.ndarray]:
    """(labels as int64 with -1 where invalid, the invalid mask); the distinct spellings are parsed once."""
    raw = table[schema.LABEL]
    codes, uniques = pd.factorize(raw)  # a missing cell gets code -1
    text = pd.Series([str(u) for u in uniques], dtype=object)
    numbers = pd.to_numeric(text, errors="coerce").astype(float).to_numpy()
    values = np.full(len(uniques), -1, dtype=np.int64)
    with np.errstate(invalid="ignore"):
        small = np.isfinite(numbers) & (numbers == np.floor(numbers)) & (np.abs(numbers) <= 2**53)
    values[small] = numbers[small].astype(np.int64)
    ok = small.copy()
    out_of_range = np.zeros(len(uniques), dtype=bool)
    for i in np.flatnonzero(~small & np.isfinite(numbers)):  # beyond 2**53 floats are inexact: parse exactly
        exact = _exact_integer(text[i])
        if exact is None:
            continue
        if -(2**63) <= exact < 2**63:
            values[i], ok[i] = exact, True
        else:
            out_of_range[i] = True
    ok_rows = np.append(ok, False)[codes]
    range_rows = np.append(out_of_range, False)[codes]
    bad = ~ok_rows & ~range_rows
    if bad.any():
        examples = _examples(repr(v) for v in raw[bad].fillna("").head(_SHOWN))
        problems.add(f"column 'label': {int(bad.sum())} value(s) are missing or not integers at {_lines(bad)} "
                     f"(values: {examples}); every row needs an integer label id: map names to integers first.")
    if range_rows.any():
        examples = _examples(repr(v) for v in raw[range_rows].head(_SHOWN))
        problems.add(f"column 'label': {int(range_rows.sum())} value(s) do not fit in a 64-bit integer at "
                     f"{_lines(range_rows)} (values: {examples}); use label ids between -2**63 and 2**63 - 1 "
                     "(e.g. renumber them 0, 1, 2, ...).")
    labels = np.append(values, -1)[codes]
    return labels, ~ok_rows


def _check_split(table: pd.DataFrame, problems: _Problems) -> np.ndarray:
    codes, uniques = pd.factorize(table[schema.SPLIT].fillna(""))
    split = pd.Series(np.array([str(u).strip() for u in uniques] + [""], dtype=object)[codes])
    bad = ~split.isin(schema.SPLITS)
    if bad.any():
        unknown = pd.unique(split[bad])
        values = _examples(repr(v) for v in unknown)
        aliases = {"val": schema.SPLIT_VALIDATION, "valid": schema.SPLIT_VALIDATION, "test": schema.SPLIT_VALIDATION,
                   "eval": schema.SPLIT_VALIDATION, "training": schema.SPLIT_TRAIN}
        meant = {v: aliases.get(v, aliases.get(v.lower(), v.lower() if v.lower() in schema.SPLITS else None))
                 for v in unknown[:_SHOWN]}
        hint = "; ".join(f"{v!r} -> {m!r}" for v, m in meant.items() if m)
        problems.add(f"column 'split': unknown value(s) {values} at {_lines(bad)}; use exactly "
                     f"'{schema.SPLIT_TRAIN}' or '{schema.SPLIT_VALIDATION}'"
                     + (f" (probably meant: {hint})." if hint else "."))
    return split.to_numpy()


def _check_query_gallery(table: pd.DataFrame, split: np.ndarray, problems: _Problems):
    flags = {}
    for column in (schema.IS_QUERY, schema.IS_GALLERY):
        values, empty, invalid = parse_bool(table[column])
        if invalid.any():
            shown = _examples(repr(v) for v in pd.unique(table[column][invalid]))
            problems.add(f"column '{column}': value(s) {shown} at {_lines(invalid)} are not booleans; "
                         "use true/false (or 1/0), or leave the cell empty on train rows.")
        flags[column] = values
    train = split == schema.SPLIT_TRAIN
    flagged_train = train & (flags[schema.IS_QUERY] | flags[schema.IS_GALLERY])
    if flagged_train.any():
        problems.add(f"columns 'is_query'/'is_gallery': {int(flagged_train.sum())} train row(s) are marked as "
                     f"query or gallery at {_lines(flagged_train)}; leave both empty on train rows (or set the "
                     "split of those rows to 'validation').")
    val = split == schema.SPLIT_VALIDATION
    unused = val & ~flags[schema.IS_QUERY] & ~flags[schema.IS_GALLERY]
    if unused.any():
        problems.add(f"columns 'is_query'/'is_gallery': {int(unused.sum())} validation row(s) are neither query "
                     f"nor gallery at {_lines(unused)}; set at least one of them to true (both is fine: such an "
                     "item never retrieves itself).")
    return flags[schema.IS_QUERY] & val, flags[schema.IS_GALLERY] & val


def _check_categories(table: pd.DataFrame, labels: np.ndarray, bad_labels: np.ndarray, problems: _Problems) -> None:
    if schema.CATEGORY not in table.columns:
        return
    category = table[schema.CATEGORY]
    empty = category.isna()
    if empty.any():
        problems.add(f"column 'category': {int(empty.sum())} empty cell(s) at {_lines(empty)}; give every row a "
                     "category (or drop the column).")
    # rows whose label is invalid (already reported) have no label to check: leave them out
    per_label = (pd.DataFrame({"label": labels, "category": category})[~bad_labels].dropna()
                 .groupby("label")["category"])
    n_categories = per_label.nunique()
    mixed = n_categories[n_categories > 1].index
    if len(mixed):
        details = "; ".join(f"label {label}: {', '.join(sorted(per_label.get_group(label).unique()))}"
                            for label in mixed[:_SHOWN])
        problems.add(f"column 'category': {len(mixed)} label(s) are mapped to several categories ({details}); "
                     "a label belongs to exactly one category: fix the category of those rows.")


def _check_bboxes(table: pd.DataFrame, problems: _Problems) -> np.ndarray | None:
    """The (n, 4) float array x1, x2, y1, y2 (NaN where absent), or None when the table has no box columns."""
    present_columns = [c for c in schema.BBOX_COLUMNS if c in table.columns]
    if not present_columns:
        return None
    if len(present_columns) < 4:
        absent = [c for c in schema.BBOX_COLUMNS if c not in table.columns]
        problems.add(f"bounding box columns: found {', '.join(present_columns)} but not {', '.join(absent)}; "
                     "a bounding box needs all four columns x_1, x_2, y_1, y_2 (or none of them).")
        return None
    raw = table[list(schema.BBOX_COLUMNS)]
    numbers = raw.apply(pd.to_numeric, errors="coerce")
    non_numeric = (numbers.isna() & raw.notna()).any(axis=1).to_numpy()
    if non_numeric.any():
        problems.add(f"bounding box columns: non-numeric values at {_lines(non_numeric)}; use pixel numbers.")
    filled = numbers.notna().sum(axis=1).to_numpy()
    partial = (filled > 0) & (filled < 4) & ~non_numeric
    if partial.any():
        problems.add(f"bounding box columns: {int(partial.sum())} row(s) fill only some of x_1, x_2, y_1, y_2 at "
                     f"{_lines(partial)}; fill all four, or leave all four empty for the whole image.")
    box = numbers.to_numpy(dtype=float, copy=True)
    complete = filled == 4
    with np.errstate(invalid="ignore"):
        inverted = complete & ((box[:, 0] >= box[:, 1]) | (box[:, 2] >= box[:, 3]))
        negative = complete & (box < 0).any(axis=1)
    if inverted.any():
        problems.add(f"bounding box columns: x_1 >= x_2 or y_1 >= y_2 at {_lines(inverted)}; x_1 < x_2 and "
                     "y_1 < y_2 are the left/right and top/bottom edges in pixels.")
    if negative.any():
        with np.errstate(invalid="ignore"):
            below = complete[:, None] & (box < 0)
        details = "; ".join(f"{column} at {_lines(below[:, i])}" for i, column in enumerate(schema.BBOX_COLUMNS)
                            if below[:, i].any())
        problems.add(f"bounding box columns: negative coordinates in {details}; pixel coordinates start at 0 "
                     "(x from the left edge, y from the top edge).")
    box[~complete | inverted | negative] = np.nan
    return box


def _check_texts(table: pd.DataFrame, problems: _Problems) -> np.ndarray:
    """The texts as an object array of str; empty cells, blank texts and control characters are problems."""
    raw = table[schema.TEXT]
    empty = raw.isna().to_numpy()
    text = raw.fillna("").astype(str)
    blank = ~empty & (text.str.strip() == "").to_numpy()
    if empty.any() or blank.any():
        parts = [f"{int(empty.sum())} empty cell(s) at {_lines(empty)}"] if empty.any() else []
        parts += [f"{int(blank.sum())} text(s) of only spaces at {_lines(blank)}"] if blank.any() else []
        problems.add(f"column 'text': {'; '.join(parts)}; every row needs its text (or drop those rows).")
    control = text.str.contains(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", regex=True).to_numpy()
    if control.any():
        problems.add(f"column 'text': {int(control.sum())} text(s) hold control characters (e.g. NUL) at "
                     f"{_lines(control)}; remove them: a text may hold letters, digits, punctuation, spaces, "
                     "tabs and line breaks.")
    return text.to_numpy(dtype=object)


def _resolve_paths(table: pd.DataFrame, root: Path, problems: _Problems) -> np.ndarray:
    raw = table[schema.PATH]
    empty = raw.isna()
    if empty.any():
        problems.add(f"column 'path': {int(empty.sum())} empty cell(s) at {_lines(empty)}; every row needs the "
                     "image path (relative to the dataset root, or absolute).")
    text = raw.fillna("").astype(str)
    if os.name == "posix":
        absolute = text.str.startswith("/").to_numpy(dtype=bool)
    else:
        absolute = text.map(os.path.isabs).to_numpy(dtype=bool)
    dotted = text.str.startswith("./")
    if dotted.any():  # "./img/a.png" -> "img/a.png", as pathlib would join it
        text = text.where(~dotted, text.str.replace(r"^(?:\./)+", "", regex=True))
    joined = (str(root) + os.sep) + text
    return np.where(absolute | empty.to_numpy(), text.to_numpy(dtype=object), joined.to_numpy(dtype=object))


def _header_size(path: str) -> tuple[tuple[int, int] | None, str | None]:
    """((width, height), None) from the header alone, or (None, why it failed)."""
    try:
        return image_size(path), None
    except Exception as error:  # unreadable header: a problem of that file
        return None, f"{type(error).__name__}: {error}"


def _check_images(paths: np.ndarray, bbox: np.ndarray | None, mode: str, problems: _Problems, *,
                  max_pixels: MaxPixels, cache: str | os.PathLike | bool, cache_key: str) -> ImageCheckReport:
    """Files exist; with "quick" / "decode" they read (see `lookalike.data.image_check`) and are within the pixel
    limit; boxes lie inside their image (sizes from the check, or from lazy opens of the boxed files)."""
    unique = pd.unique(paths[paths != ""]).tolist()
    report = check_image_files(unique, mode, max_pixels=max_pixels, cache=cache, cache_key=cache_key)
    if mode == "none":
        return report
    path_series = pd.Series(paths)
    missing_rows = path_series.isin(report.missing).to_numpy()
    if missing_rows.any():
        problems.add(f"column 'path': {len(report.missing)} image file(s) do not exist ({_lines(missing_rows)}): "
                     f"{_examples(report.missing)}; check the dataset root and the paths in the CSV.")
    readable = (paths != "") & ~missing_rows
    boxed = readable & ~np.isnan(bbox).any(axis=1) if bbox is not None else np.zeros(len(paths), dtype=bool)
    if mode == "exists":
        for path in pd.unique(paths[boxed]).tolist():
            size, why = _header_size(path)
            if why is None:
                report.sizes[path] = size
            else:
                report.broken[path] = why
    if report.broken:
        broken = report.broken
        rows = path_series.isin(list(broken)).to_numpy()
        listing = "; ".join(f"{p} ({why})" for p, why in list(broken.items())[:_SHOWN])
        more = f" (and {len(broken) - _SHOWN} more)" if len(broken) > _SHOWN else ""
        problems.add(f"column 'path': {len(broken)} image file(s) cannot be decoded ({_lines(rows)}): "
                     f"{listing}{more}; replace those files or drop their rows.")
    if report.too_large:
        large = report.too_large
        rows = path_series.isin(list(large)).to_numpy()
        listing = "; ".join(f"{p} ({w} x {h})" for p, (w, h) in list(large.items())[:_SHOWN])
        more = f" (and {len(large) - _SHOWN} more)" if len(large) > _SHOWN else ""
        problems.add(f"column 'path': {len(large)} image(s) have more pixels than the limit of "
                     f"{report.max_pixels:,} ({_lines(rows)}): {listing}{more}; shrink them, or raise the limit "
                     f"with `check-data --max-pixels N`, the max_pixels argument, or the environment variable "
                     f"{MAX_PIXELS_ENV}=N ('none' for no limit).")
    sizes = report.sizes
    if boxed.any() and sizes:
        size = path_series.map(pd.Series(sizes, dtype=object))
        width = np.array([s[0] if isinstance(s, tuple) else np.inf for s in size[boxed]], dtype=float)
        height = np.array([s[1] if isinstance(s, tuple) else np.inf for s in size[boxed]], dtype=float)
        outside = np.zeros(len(paths), dtype=bool)
        outside[boxed] = (bbox[boxed, 1] > width) | (bbox[boxed, 3] > height)
        if outside.any():
            problems.add(f"bounding box columns: {int(outside.sum())} box(es) reach outside their image at "
                         f"{_lines(outside)}; x_2 must be <= the image width and y_2 <= the image height "
                         "(pixels, origin at the top-left corner).")
    return report


def _queries_without_gallery(table: pd.DataFrame, labels: np.ndarray, is_query: np.ndarray,
                             is_gallery: np.ndarray) -> np.ndarray:
    """Mask of queries with no relevant gallery item: same label, not itself, not of its own sequence."""
    gallery_per_label = pd.Series(labels).map(pd.Series(labels[is_gallery]).value_counts())
    per_query = gallery_per_label.fillna(0).to_numpy(dtype=float)
    excluded = is_gallery.astype(float)  # an item that is also a gallery item never retrieves itself
    if schema.SEQUENCE in table.columns:
        sequence = table[schema.SEQUENCE]
        has_sequence = sequence.notna().to_numpy()
        frame = pd.DataFrame({"label": labels, "sequence": sequence.to_numpy(), "gallery": is_gallery})
        same_sequence = frame.groupby(["label", "sequence"])["gallery"].transform("sum")
        excluded = np.where(has_sequence, same_sequence.fillna(0).to_numpy(dtype=float), excluded)
    return is_query & (per_query - excluded <= 0)


def _validate(root: str | os.PathLike, csv: str | os.PathLike, check_images: str, queries_without_gallery: str,
              max_pixels: MaxPixels, check_cache: str | os.PathLike | bool, modality: str = "image",
              ) -> tuple[pd.DataFrame, list[str], Path, ImageCheckReport | None]:
    if check_images not in CHECK_IMAGES:
        raise DatasetError(unknown_choice("check_images mode", check_images, CHECK_IMAGES))
    if queries_without_gallery not in QUERIES_WITHOUT_GALLERY:
        raise DatasetError(unknown_choice("queries_without_gallery mode", queries_without_gallery,
                                          QUERIES_WITHOUT_GALLERY))
    root = Path(root).expanduser().absolute()
    csv_path, table, modality = _read_csv(root, csv, modality)
    problems = _Problems(csv_path)
    labels, bad_labels = _check_labels(table, problems)
    split = _check_split(table, problems)
    is_query, is_gallery = _check_query_gallery(table, split, problems)
    flags_ok = not problems.items  # the query/gallery check needs sound labels, splits and flags
    _check_categories(table, labels, bad_labels, problems)
    bbox = paths = texts = report = None
    if modality == "image":
        bbox = _check_bboxes(table, problems)
        paths = _resolve_paths(table, root, problems)
        report = _check_images(paths, bbox, check_images, problems, max_pixels=max_pixels, cache=check_cache,
                               cache_key=str(csv_path))
    else:
        texts = _check_texts(table, problems)

    notes: list[str] = []
    if flags_ok:
        orphans = _queries_without_gallery(table, labels, is_query, is_gallery)
        if orphans.any():
            where = f"{_lines(orphans)}; labels {_examples(pd.unique(labels[orphans]))}"
            sequence_note = " (gallery items of the query's own sequence do not count)" \
                if schema.SEQUENCE in table.columns else ""
            if queries_without_gallery == "error":
                problems.add(f"columns 'is_query'/'is_gallery': {int(orphans.sum())} validation queries have no "
                             f"other gallery item with their label{sequence_note} ({where}); such queries "
                             "cannot be scored. Add gallery items of those labels, or drop them as queries with "
                             "--drop-queries-without-gallery (queries_without_gallery='drop').")
            else:
                notes.append(f"{int(orphans.sum())} queries without any other gallery item of their label"
                             f"{sequence_note} were dropped as queries ({where}).")
                is_query = is_query & ~orphans
    problems.raise_if_any()

    out = table.copy()
    out[schema.LABEL] = labels
    if paths is not None:
        out[schema.PATH] = paths.astype(str)
    if texts is not None:
        out[schema.TEXT] = texts
    out[schema.SPLIT] = split
    out[schema.IS_QUERY] = is_query
    out[schema.IS_GALLERY] = is_gallery
    if schema.CATEGORY in out.columns:
        out[schema.CATEGORY] = out[schema.CATEGORY].astype(str)
    if bbox is not None:
        for i, column in enumerate(schema.BBOX_COLUMNS):
            out[column] = bbox[:, i]
    keep = (split == schema.SPLIT_TRAIN) | is_query | is_gallery
    return out[keep].reset_index(drop=True), notes, csv_path, report


def load_dataset_table(root: str | os.PathLike, csv: str | os.PathLike = "df.csv", *,
                       check_images: str = "exists", queries_without_gallery: str = "error",
                       max_pixels: MaxPixels = "default", check_cache: str | os.PathLike | bool = True,
                       modality: str = "image") -> pd.DataFrame:
    """The validated dataset table of `root/csv` with normalised types and absolute paths.

    Raises `DatasetError` listing every problem found. `check_images`: "exists" (files exist), "quick"
    (header, pixel limit and a reduced decode of every file, cached by path + mtime + size), "decode" (every
    image fully decodes) or "none"; see `lookalike.data.image_check`. `max_pixels`: the pixel limit ("quick"
    and "decode"; "default" = $LOOKALIKE_MAX_PIXELS or 50 MP; None = no limit). `check_cache`: True (default
    folder), False, or a folder for the "quick" results. `queries_without_gallery`: "error", or "drop" them
    as queries with a warning. `modality`: "image" (column `path`, images checked), "text" (column `text`:
    empty, blank and control-character texts are problems) or "auto" (text when there is no `path` column).
    """
    table, notes, _, _ = _validate(root, csv, check_images, queries_without_gallery, max_pixels, check_cache,
                                   modality)
    for note in notes:
        warnings.warn(note, stacklevel=2)
    return table


def check_dataset(root: str | os.PathLike, csv: str | os.PathLike = "df.csv", *, check_images: str = "exists",
                  queries_without_gallery: str = "error", max_pixels: MaxPixels = "default",
                  check_cache: str | os.PathLike | bool = True, modality: str = "auto") -> DatasetSummary:
    """Validate a dataset (see `load_dataset_table`; `modality` "auto": texts when the CSV has a `text`
    column and no `path` column) and summarise it."""
    table, notes, csv_path, report = _validate(root, csv, check_images, queries_without_gallery, max_pixels,
                                               check_cache, modality)
    split = table[schema.SPLIT]
    return DatasetSummary(
        csv=str(csv_path),
        n_items=len(table),
        n_labels=int(table[schema.LABEL].nunique()),
        items_per_split={s: int((split == s).sum()) for s in schema.SPLITS},
        labels_per_split={s: int(table.loc[split == s, schema.LABEL].nunique()) for s in schema.SPLITS},
        n_queries=int(table[schema.IS_QUERY].sum()),
        n_gallery=int(table[schema.IS_GALLERY].sum()),
        n_categories=int(table[schema.CATEGORY].nunique()) if schema.CATEGORY in table.columns else None,
        warnings=notes,
        images=report,
        n_texts=int(len(table)) if report is None else None,
    )


_LEVEL_WORDS = {"none": "not checked", "exists": "exist (not opened)",
                "quick": "read (header, pixel limit and a reduced decode)", "decode": "fully decode"}


def _image_line(report: ImageCheckReport) -> str:
    """'770 files read (...), 700 from the cache; largest 64 x 64; pixel limit 50,000,000'."""
    if report.level == "none":
        return "not checked"
    text = f"{report.n_files} files {_LEVEL_WORDS[report.level]}"
    if report.level == "quick":
        text += f", {report.n_cached} of them from the cache of an earlier check"
    if report.level in ("quick", "decode"):
        if report.largest is not None:
            text += f"; largest {report.largest[0]} x {report.largest[1]}"
        limit = "none" if report.max_pixels is None else f"{report.max_pixels:,}"
        text += f"; pixel limit {limit}"
    return text


def format_summary(summary: DatasetSummary) -> str:
    """A short human-readable report of a valid dataset."""
    lines = [f"dataset OK: {summary.csv}",
             f"  items: {summary.n_items}   labels: {summary.n_labels}"]
    for split in schema.SPLITS:
        lines.append(f"  {split}: {summary.items_per_split[split]} items, {summary.labels_per_split[split]} labels")
    lines.append(f"  queries: {summary.n_queries}   gallery: {summary.n_gallery}")
    if summary.n_categories is not None:
        lines.append(f"  categories: {summary.n_categories}")
    if summary.images is not None:
        lines.append(f"  images: {_image_line(summary.images)}")
    if summary.n_texts is not None:
        lines.append(f"  texts: {summary.n_texts} (none empty, blank or with control characters)")
    lines.extend(f"  warning: {w}" for w in summary.warnings)
    return "\n".join(lines)
