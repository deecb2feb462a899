"""The write-ahead journal of an index folder: every add and remove, appended and fsynced before the call returns.

One record per line: ``<crc32 of the JSON, 8 hex digits> <JSON>\\n``. A record is acknowledged only after its line
is on disk, so a crash can leave at most one torn last line (no newline, or a checksum that does not match):
`read` stops there and reports the size of the good part; the writer cuts the torn tail before its next
append. A bad line followed by good ones is damage, not a crash, and is reported as such. Embeddings travel as
base64 of little-endian float32.
"""

from __future__ import annotations

import base64
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.index.errors import IndexFormatError
from lookalike.io import fsync_dir, to_jsonable

__all__ = ["Journal", "encode_embeddings", "decode_embeddings"]


def encode_embeddings(x: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(x, dtype="<f4").tobytes()).decode("ascii")


def decode_embeddings(text: str, n: int, dim: int) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").reshape(n, dim).astype(np.float32)


def _line(record: dict) -> bytes:
    body = json.dumps(to_jsonable(record), separators=(",", ":"), allow_nan=False)
    return f"{zlib.crc32(body.encode('utf-8')):08x} {body}\n".encode("utf-8")


def _parse(line: bytes) -> dict | None:
    """The record of one complete line, or None when its checksum or JSON is broken."""
    try:
        text = line.decode("utf-8")
        crc, body = text[:8], text[9:].rstrip("\n")
        if text[8] != " " or int(crc, 16) != zlib.crc32(body.encode("utf-8")):
            return None
        record = json.loads(body)
    except (UnicodeDecodeError, ValueError, IndexError):
        return None
    return record if isinstance(record, dict) and "op" in record else None


@dataclass
class Journal:
    """The journal file ``path``; ``good_size`` is the length of its intact part as last read or written."""

    path: Path
    good_size: int = 0

    def read(self) -> list[dict]:
        """Every intact record, in order; a torn last line (an append cut by a crash) is left out."""
        if not self.path.is_file():
            self.good_size = 0
            return []
        data = self.path.read_bytes()
        records, offset = [], 0
        lines = data.split(b"\n")
        for i, chunk in enumerate(lines):
            complete = i < len(lines) - 1
            if not complete:
                break  # the part after the last newline: empty, or a torn append
            record = _parse(chunk + b"\n")
            if record is None:
                if any(lines[j] for j in range(i + 1, len(lines))):
                    raise IndexFormatError(
                        f"{self.path}: line {i + 1} is damaged and is followed by other records (a crash only "
                        "tears the last line). Restore the folder from a copy, or delete the journal to go back "
                        "to the last saved state (losing the changes it holds).")
                break
            records.append(record)
            offset += len(chunk) + 1
        self.good_size = offset
        return records

    def append(self, record: dict[str, Any]) -> None:
        """Append one record and fsync it (and, for a new file, its folder entry) before returning."""
        new = not self.path.exists()
        line = _line(record)
        with open(self.path, "ab") as f:
            if f.tell() != self.good_size:
                self._cut_torn_tail(f)
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
            self.good_size = f.tell()
        if new:
            fsync_dir(self.path.parent)

    def _cut_torn_tail(self, f) -> None:
        size = f.tell()
        if size < self.good_size:
            raise IndexFormatError(f"{self.path} shrank since it was read (another process saved or edited the "
                                   "index); load the index again before changing it.")
        with open(self.path, "rb") as r:
            r.seek(self.good_size)
            tail = r.read()
        if any(_parse(chunk + b"\n") is not None for chunk in tail.split(b"\n")[:-1]):
            raise IndexFormatError(f"{self.path} holds changes written by another process since this index was "
                                   "loaded; load the index again before changing it (one writer at a time).")
        f.truncate(self.good_size)
        f.seek(self.good_size)
