"""JSON text read from a run's files: whatever a file holds, a value or a ValueError, never a RecursionError."""

from __future__ import annotations

import json
from typing import Any


def parse_json(text: str | bytes | bytearray) -> Any:
    """json.loads, with nesting too deep for Python's stack (a line of 100,000 brackets) refused as the ValueError
    every reader already takes for a line that is no record."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deep to read") from None
