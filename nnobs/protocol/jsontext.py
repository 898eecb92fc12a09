"""JSON text read from a run's files: whatever a file holds, a value or a ValueError, never a RecursionError."""

from __future__ import annotations

import json
from typing import Any


def parse_json(text: str | bytes | bytearray) -> Any:
    """json.loads, with nesting too deep for Python's stack (a line of 100,000 brackets) refused as the ValueError
    every reader already takes for a line that is no record.

    The bound is Python's recursion limit (1,000 frames by default, less the caller's own): some 900 levels, where
    the deepest record nnobs writes (params) has six. Every reader of a run file parses through here, the bulk
    parser's JSON path included; its regex path matches only flat numbers.
    """
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deep to read") from None
