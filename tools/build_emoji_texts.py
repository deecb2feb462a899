"""Build the shipped text retrieval dataset `lookalike/assets/emoji_texts/` from the `emoji` package (offline).

Labels are emoji; the instances of a label are its descriptions: the English CLDR name, the GitHub/Slack-style
aliases, and the names in German, Spanish, French, Italian, Portuguese, Indonesian and Turkish (all shipped by
the `emoji` package, which takes them from Unicode CLDR). A query text must find the other descriptions of the
same emoji, across wording and language.

    pip install "emoji==2.16.0"     # the version the shipped CSV was built from (the dev extra installs it)
    python tools/build_emoji_texts.py [--out lookalike/assets/emoji_texts]

Rules (deterministic; the same package version gives the same CSV byte for byte):
- emoji: fully-qualified ones only, without skin-tone or hair-style component variants (they would be labels
  that differ by one word), emoji version <= 15.1;
- texts: ``:name_with_underscores:`` becomes ``name with underscores``; aliases shorter than 3 letters (``:de:``,
  ``:+1:``) are left out;
- no trivial duplicates: two texts of one label that are equal after lower-casing and removing everything but
  letters and digits are kept once (first in the order en, aliases, de, es, fr, it, pt, id, tr);
- no ambiguous texts: a text (same comparison) that describes several emoji is dropped from all of them;
- a label needs at least 3 texts (a query and 2 gallery items after dropping the query);
- split by label: about a quarter of the emoji (chosen by a hash of the emoji, so adding emoji to the package
  does not reshuffle the others) are validation labels, where every text is both query and gallery.

Non-Latin-script languages of the package (ar, fa, ja, ko, ru, zh) are left out: the English WordPiece vocabulary
of MiniLM splits them into unknown or single-character tokens.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import unicodedata
from pathlib import Path

LANGUAGES = ("de", "es", "fr", "it", "pt", "id", "tr")
SKIN_AND_HAIR = set(range(0x1F3FB, 0x1F400)) | set(range(0x1F9B0, 0x1F9B4))
MAX_EMOJI_VERSION = 15.1
VALIDATION_SHARE = 0.25
MIN_TEXTS = 3


def clean(name: str) -> str:
    """':grinning_face:' -> 'grinning face' (NFC, single spaces)."""
    text = unicodedata.normalize("NFC", name.strip(":")).replace("_", " ")
    return re.sub(r"\s+", " ", text).strip()


def key(text: str) -> str:
    """The comparison key of a text: lower-cased letters and digits only."""
    return "".join(ch for ch in text.casefold() if ch.isalnum())


def is_validation(emoji_char: str) -> bool:
    digest = hashlib.sha256(emoji_char.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < VALIDATION_SHARE


def collect(emoji_module) -> list[tuple[str, list[tuple[str, str]]]]:
    """[(emoji, [(source, text), ...])] of every kept emoji, texts de-duplicated within the emoji."""
    emoji_module.config.load_language(list(LANGUAGES))  # the names in other languages load on request
    data = emoji_module.EMOJI_DATA
    fully = emoji_module.STATUS["fully_qualified"]
    out = []
    for char in sorted(data):
        info = data[char]
        if info.get("status") != fully or float(info.get("E", 99)) > MAX_EMOJI_VERSION:
            continue
        if any(ord(c) in SKIN_AND_HAIR for c in char):
            continue
        texts = [("en", clean(info["en"]))]
        texts += [("alias", clean(a)) for a in info.get("alias", []) if sum(c.isalpha() for c in a) >= 3]
        texts += [(lang, clean(info[lang])) for lang in LANGUAGES if info.get(lang)]
        seen, kept = set(), []
        for source, text in texts:
            k = key(text)
            if k and k not in seen:
                seen.add(k)
                kept.append((source, text))
        out.append((char, kept))
    return out


def build(emoji_module) -> tuple[list[dict], dict]:
    """The CSV rows and the counts."""
    entries = collect(emoji_module)
    owners: dict[str, set[str]] = {}
    for char, texts in entries:
        for _, text in texts:
            owners.setdefault(key(text), set()).add(char)
    ambiguous = {k for k, chars in owners.items() if len(chars) > 1}
    rows, label, dropped_labels = [], 0, 0
    n_ambiguous = 0
    for char, texts in entries:
        kept = [(s, t) for s, t in texts if key(t) not in ambiguous]
        n_ambiguous += len(texts) - len(kept)
        if len(kept) < MIN_TEXTS:
            dropped_labels += 1
            continue
        val = is_validation(char)
        for source, text in kept:
            rows.append({"label": label, "text": text, "split": "validation" if val else "train",
                         "is_query": "true" if val else "", "is_gallery": "true" if val else "",
                         "emoji": char, "source": source})
        label += 1
    counts = {
        "emoji_package": emoji_module.__version__,
        "rows": len(rows),
        "labels": label,
        "train_rows": sum(r["split"] == "train" for r in rows),
        "validation_rows": sum(r["split"] == "validation" for r in rows),
        "train_labels": len({r["label"] for r in rows if r["split"] == "train"}),
        "validation_labels": len({r["label"] for r in rows if r["split"] == "validation"}),
        "ambiguous_texts_dropped": n_ambiguous,
        "labels_with_too_few_texts": dropped_labels,
    }
    return rows, counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "lookalike" / "assets"
                                              / "emoji_texts"))
    args = parser.parse_args(argv)
    try:
        import emoji
    except ImportError:
        print('this script needs the emoji package: pip install "emoji==2.16.0"', file=sys.stderr)
        return 2
    import csv
    import io

    rows, counts = build(emoji)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    from lookalike.io import write_text_atomic

    write_text_atomic(out / "df.csv", buffer.getvalue())
    for name, value in counts.items():
        print(f"{name}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
