"""nnobs tail: a run's last records (or every one from the K-th on), then, with -f, each new one as it is written."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from nnobs.cli.arg_types import TailLines
from nnobs.cli.runs import existing_run
from nnobs.protocol.files import open_file
from nnobs.protocol.jsontext import parse_json
from nnobs.protocol.records import MAX_LINE_BYTES, RecordReader
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
            new = [line + b"\n" for line in reader.read_new_lines().split(b"\n") if line.strip() and is_record(line)]
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
        f = open_file(path)
    except FileNotFoundError:
        return [], 0
    with f:
        complete_end = end_of_last_line(f.fileno(), os.fstat(f.fileno()).st_size)
        found: list[bytes] = []  # newest first
        for line in lines_backwards(f.fileno(), complete_end):
            if len(found) == count:
                break
            if line is not None and line.strip() and is_record(line):
                found.append(line)
    return found[::-1], complete_end


def end_of_last_line(fd: int, size: int) -> int:
    """The offset just past the file's last newline (0 without one), found reading backwards, keeping nothing."""
    pos = size
    while pos > 0:
        step = min(TAIL_BLOCK, pos)
        pos -= step
        newline = os.pread(fd, step, pos).rfind(b"\n")
        if newline >= 0:
            return pos + newline + 1
    return 0


def lines_backwards(fd: int, end: int) -> Iterator[bytes | None]:
    """The lines before end (just past a newline), newest first, without their newlines; None for a line longer
    than MAX_LINE_BYTES. Each block is read once and each line joined once: the cost is linear in what is read,
    and a line past the bound is passed over without being kept."""
    later_parts: list[bytes] = []  # of the line being cut, the parts after the block read now, newest first
    later_length = 0  # their length, counted on once they are dropped for a line past the bound
    pos = end - 1  # the newline ending the newest line is not part of it
    while pos > 0:
        step = min(TAIL_BLOCK, pos)
        pos -= step
        block = os.pread(fd, step, pos)
        cut = len(block)
        while (newline := block.rfind(b"\n", 0, cut)) >= 0:
            yield _joined(block[newline + 1 : cut], later_parts, later_length)
            later_parts, later_length, cut = [], 0, newline
        later_length += cut
        if later_length < MAX_LINE_BYTES:
            later_parts.append(block[:cut])
        else:
            later_parts = []
    if end > 0:
        yield _joined(b"", later_parts, later_length)  # the file's first line, whole at its start


def _joined(start: bytes, later_parts: list[bytes], later_length: int) -> bytes | None:
    """A line from its start and the parts after it, newest first; None when it is longer than MAX_LINE_BYTES."""
    if len(start) + later_length >= MAX_LINE_BYTES:  # with its newline, past the bound
        return None
    return start + b"".join(reversed(later_parts))


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
