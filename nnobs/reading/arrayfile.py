"""A fold cache's file: a JSON header, then raw int64 and float64 arrays, read straight into place and checked.

The magic line, the header's length (8 bytes, little-endian), the header {"meta": ..., "arrays":
{name: [dtype, shape, offset]}}, then each array's bytes. Nothing in the file is ever unpickled or
executed, and every entry is checked before use, since anyone may have put a file there.
"""

from __future__ import annotations

import json
import math
import os
import struct
from io import BufferedIOBase
from typing import IO, Any

import numpy as np

from nnobs.protocol.jsontext import parse_json
from nnobs.protocol.numbers import is_int

MAGIC = b"nnobs fold cache\n"
ALIGN = 64  # each array's bytes start at a multiple of this
MAX_HEADER_BYTES = 64 << 20  # a longer header is not one this module wrote
DTYPES = {"<i8": np.int64, "<f8": np.float64}  # the only arrays a cache holds


def write_arrays(out: IO[bytes], meta: Any, arrays: dict[str, np.ndarray]) -> None:
    """Write meta (JSON) and the int64 and float64 arrays to the binary file object out."""
    arrays = {name: np.ascontiguousarray(values) for name, values in arrays.items()}
    table, offset = {}, 0
    for name, values in arrays.items():
        assert values.dtype.str in DTYPES, f"{name}: a cache holds int64 and float64 arrays, not {values.dtype}"
        table[name] = [values.dtype.str, list(values.shape), offset]
        offset += -(-values.nbytes // ALIGN) * ALIGN
    header = json.dumps({"meta": meta, "arrays": table}).encode()
    start = len(MAGIC) + 8 + len(header)
    out.write(MAGIC + struct.pack("<Q", len(header)) + header + bytes(-start % ALIGN))
    for values in arrays.values():
        out.write(values.data)
        out.write(bytes(-values.nbytes % ALIGN))


class ArrayFile:
    """A cache file opened for reading: its meta, and its arrays read on demand, each checked against the file."""

    def __init__(self, f: BufferedIOBase):
        self._f = f
        if f.read(len(MAGIC)) != MAGIC:
            raise ValueError("not a fold cache")
        (length,) = struct.unpack("<Q", f.read(8))
        if length > MAX_HEADER_BYTES:
            raise ValueError("fold cache: header too long")
        header = parse_json(f.read(length))
        check(isinstance(header, dict), "header")
        self.meta, self._table = header["meta"], header["arrays"]
        check(isinstance(self._table, dict), "arrays")
        start = len(MAGIC) + 8 + length
        self._data_at = start + -start % ALIGN
        self._size = os.fstat(f.fileno()).st_size
        # Arrays this module wrote lie side by side, so their sizes add up to no more than the file: a header that
        # points many arrays at the same bytes is refused here, before reading them all could allocate more.
        declared = sum(8 * math.prod(self._entry(name)[1]) for name in self._table)
        check(declared <= self._size - self._data_at, "arrays")
        self.files = list(self._table)

    def _entry(self, name: str) -> tuple[str, list[int], int]:
        """The dtype, shape and offset the header gives the array name, checked to lie within the file."""
        dtype, shape, offset = self._table[name]
        check(
            isinstance(dtype, str)
            and dtype in DTYPES
            and isinstance(shape, list)
            and all(is_int(n) and n >= 0 for n in shape)
            and is_int(offset)
            and offset >= 0,
            name,
        )
        check(self._data_at + offset + 8 * math.prod(shape) <= self._size, name)  # before allocating what it says
        return dtype, shape, offset

    def __getitem__(self, name: str) -> np.ndarray:
        dtype, shape, offset = self._entry(name)
        values = np.empty(shape, DTYPES[dtype])
        if values.nbytes:
            self._f.seek(self._data_at + offset)
            check(self._f.readinto(values.data.cast("B")) == values.nbytes, name)
        return values

    def checked(self, name: str, dtype: type, shape: tuple[int | None, ...]) -> np.ndarray:
        """The array name, checked to be of dtype and shape (None: any length there)."""
        values = self[name]
        check(
            values.dtype == dtype
            and values.ndim == len(shape)
            and all(want is None or want == got for want, got in zip(shape, values.shape)),
            name,
        )
        return values


def check(ok: bool, what: str) -> None:
    """ValueError unless ok: what the cache holds of what is malformed."""
    if not ok:
        raise ValueError(f"fold cache: malformed {what}")
