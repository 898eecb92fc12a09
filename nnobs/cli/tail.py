"""nnobs tail: a run's last records (or every one from the K-th on), then, with -f, each new one as it is written."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import BinaryIO

from nnobs.cli.arg_types import TailLines
from nnobs.cli.runs import existing_run
from nnobs.protocol.jsontext import parse_json
from nnobs.protocol.records import RecordReader
from nnobs.protocol.rundir import RunDir

TAIL_BLOCK = 64 * 1024  # tail reads a long file backwards from its end in blocks of this many bytes
FOLLOW_EVERY_S = 0.2  # how often tail -f looks for new records
READ_BLOCK = 1024 * 1024  # tail +K reads the file forwards in pieces of about this many bytes


def tail(args: argparse.Namespace) -> int:
    """nnobs tail: readable on any run that exists, an imported one too."""
    return print_tail(existing_run(args, steered=False), args.lines, args.follow)


def print_tail(run: RunDir, lines: TailLines, follow: bool) -> int:
    """Print the records asked for, as the file spells them, one a line; with follow, go on until Ctrl-C."""
    out = sys.stdout.buffer
    how, count = lines
    if how == "last":
        records, offset = last_records(run.run_file, count)
        out.writelines(record + b"\n" for record in records)
    else:
        offset = write_records_from(run.run_file, count, out)
    out.flush()
    if not follow:
        return 0
    reader = RecordReader(run.run_file)
    reader.offset = offset
    try:
        while True:
            new = [line + b"\n" for line in reader.read_new_lines().splitlines() if line.strip() and is_record(line)]
            if new:
                out.writelines(new)
                out.flush()
            time.sleep(FOLLOW_EVERY_S)
    except KeyboardInterrupt:
        return 0


def is_record(line: bytes) -> bool:
    """True for a line holding a JSON object; torn lines and garbage are left out, as every reader does."""
    try:
        return isinstance(parse_json(line), dict)
    except ValueError:
        return False


def last_records(path: Path, count: int) -> tuple[list[bytes], int]:
    """The last count records of the file, oldest first, and the offset just past its last complete line.

    Reads backwards from the end in blocks, so a long run file costs what its last lines cost. A line
    after the last newline is still being written (or was torn by a kill): it is left for a follower.
    """
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return [], 0
    with f:
        pos = os.fstat(f.fileno()).st_size
        complete_end: int | None = None  # where the last complete line ends, once seen
        carry = b""  # bytes from pos on not yet cut into lines: the end of a line whose start lies before pos
        found: list[bytes] = []  # newest first
        while pos > 0 and (complete_end is None or len(found) < count):
            step = min(TAIL_BLOCK, pos)
            pos -= step
            carry = os.pread(f.fileno(), step, pos) + carry
            if complete_end is None:
                newline = carry.rfind(b"\n")
                if newline < 0:
                    continue
                complete_end, carry = pos + newline + 1, carry[:newline]
            lines = carry.split(b"\n")
            carry = lines.pop(0) if pos > 0 else b""  # at the file's start the first line is whole
            for line in reversed(lines):
                if len(found) == count:
                    break
                if line.strip() and is_record(line):
                    found.append(line)
    return found[::-1], complete_end or 0


def write_records_from(path: Path, first: int, out: BinaryIO) -> int:
    """Write every record from the first-th on (counting from 1) to out; return the offset past the last complete line.

    A line after the last newline is still being written: a follower prints it once it is whole.
    """
    reader = RecordReader(path)
    seen = 0
    while chunk := reader.read_new_lines(max_bytes=READ_BLOCK):
        for line in chunk[:-1].split(b"\n"):  # every line of the chunk is complete: it ends in a newline
            if line.strip() and is_record(line):
                seen += 1
                if seen >= first:
                    out.write(line + b"\n")
    return reader.offset
