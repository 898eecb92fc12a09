"""How the page puts a run's numbers, progress, origin and senders into words a newcomer reads the same way, and any
text a run holds into Markdown that shows it as typed."""

from __future__ import annotations

import math
import re
from typing import Any

from nnobs.protocol.numbers import is_int
from nnobs.protocol.schema import SYSTEM_METRIC, system_parts
from nnobs.reading.scalar_logs import FORMAT_NAMES

NEGLIGIBLE_CHANGE = 0.01  # a loss that moved less than 1% in 10 s has not changed, as far as a reader is concerned
DECADES_FROM = 2.0  # past this factor a change reads in decades (factors of 10), below it in percent

# Who sent a command or asked for a start, as the senders write it ("by" in control.json and in started records).
SENDERS = {
    "page": "from the page",
    "cli": "from the command line",
    "page restart": "by Restart on the page",
    "cli stop": "by `nnobs stop`",
    "cli restart": "by `nnobs restart`",
    "stop": "by a stop or restart",  # written before stops and restarts named who asked
    "sweep": "by `nnobs sweep`",
    "slurm requeue": "by Slurm, requeued after a preemption or at its time limit",
}


def loss_change(relative: float | None) -> str | None:
    """A relative loss change, (new - old) / old, in words: "-12%", "-2.3 decades"; None when negligible or meaningless."""
    if relative is None or not math.isfinite(relative) or relative <= -1 or abs(relative) < NEGLIGIBLE_CHANGE:
        return None  # unknown, a loss at or below 0 (no ratio), or too small to matter
    decades = math.log10(1 + relative)
    if abs(decades) >= math.log10(DECADES_FROM):
        return f"{decades:+.1f} decades"
    percent = 100 * relative
    return f"{percent:+.1f}%" if abs(percent) < 10 else f"{percent:+.0f}%"


def progress(batch: int, target: int) -> tuple[float, str]:
    """The progress bar's fill (0 to 1) and its text, for a batch and a target, whichever is larger."""
    if target <= 0 and batch <= 0:
        return 0.0, "The target is 0 batches: raise it to train"
    if batch > target:
        return (
            1.0,
            f"Batch {batch:,} is past the target of {target:,}, lowered since: it trains no further until the target is raised",
        )
    done = batch / target
    percent = math.floor(100 * done)  # 99.9% is not yet 100%
    return done, f"{batch:,} of {target:,} target batches ({percent}%)"


def sender(by: str) -> str:
    """Who asked, as Markdown to follow a command or a start: "from the page", "by `nnobs stop`"; "" when unnamed."""
    if not by:
        return ""
    known = SENDERS.get(by)
    return known if known else f"by {_as_name(by)}"


def duration(seconds: float) -> str:
    """A duration in one unit: "42 s", "12 min", "3.5 h", "2.0 days"."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def ago(seconds: float | None) -> str:
    """How long ago, as the page and the CLI both say it: "0.4 s ago", "12 min ago", "1.5 h ago", "3 days ago";
    "-" when there is no such moment. Past 10 s a whole number of its unit drops its ".0"."""
    if seconds is None:
        return "-"
    said = duration(max(0.0, seconds))
    return f"{said.replace('.0 ', ' ') if seconds >= 10 else said} ago"


def parameters_shown(shown: int, total: int, spread: bool, among: int | None = None) -> str:
    """Which parameters a state-vector chart draws: "every parameter", "a sample of 64 of 14,090 parameters",
    "the first 256 of 9,000 parameters" (spread: taken across the whole vector, not from its start), or, taken
    across the first `among` of them, "a sample of 64 of the first 256 of 9,000 parameters"."""
    if shown >= total:
        return "every parameter"
    if among is not None and among < total:
        return f"a sample of {shown:,} of the first {among:,} of {total:,} parameters"
    return (
        f"a sample of {shown:,} of {total:,} parameters" if spread else f"the first {shown:,} of {total:,} parameters"
    )


def served_by(description: dict[str, Any] | None) -> str:
    """What serves a script's run, from its run.json, as plain text (as_text makes it Markdown):
    "script “/usr/bin/python3 train.py” in /home/me"."""
    if not description:
        return ""
    if description.get("kind") in ("imported", "followed"):
        what = FORMAT_NAMES.get(str(description.get("format")), "run file")
        how = "followed as it is written: it cannot be steered" if description["kind"] == "followed" else "imported"
        return f"{what} “{description.get('from', '?')}”, {how}"
    argv = description.get("argv")
    words = [str(word) for word in argv] if isinstance(argv, list) else []
    cwd = description.get("cwd")
    return (f"script “{' '.join(words)}”" if words else "a script") + (f" in {cwd}" if cwd else "")


def fork_origin(origin: dict[str, Any]) -> str:
    """Where a fork came from, as Markdown: "Forked from `base` at batch 12,000, with eta 0.3 (it had 0.1)"."""
    name = _as_name(str(origin.get("run", "?")))
    batch = origin.get("batch")
    where = f" at batch {batch:,}" if is_int(batch) else ""
    changed = origin.get("changed")
    before = origin.get("parent")
    settings = changed if isinstance(changed, dict) else {}
    had = before if isinstance(before, dict) else {}
    described = [
        f"{as_text(setting)} {_setting(value)}" + (f" (it had {_setting(had[setting])})" if setting in had else "")
        for setting, value in settings.items()
    ]
    return f"Forked from {name}{where}" + (f", with {' and '.join(described)}" if described else "")


def _setting(value: Any) -> str:
    """A setting's value from fork.json, as Markdown."""
    if isinstance(value, float):
        return f"{value:g}"
    return f"{value:,}" if is_int(value) else as_text(value)


# -- text from a run, as Markdown that shows it as typed ----------------------------------------------------------

WORD_JOINER = "\u2060"  # no width and no line break: unseen, yet what it stands in is no longer one pattern
NO_BREAK_SPACE = "\u00a0"  # a space Markdown keeps where a line starts, and never reads as indentation

# What Markdown reads as syntax wherever it stands: a backslash, code, emphasis, links and images, HTML, entities,
# strikethrough, tables, LaTeX. An underscore between two letters or digits starts nothing: a file name keeps its own.
_SYNTAX = re.compile(r"[\\`*\[\]<&~|$]|(?<![^\W_])_|_(?![^\W_])")
# What starts a block where a line starts: a heading, a quote, a list item, a rule or a heading's underline.
_BLOCK_START = re.compile(r"^(?=[#>+=-])|^\d{1,9}(?=[.)](?:\s|$))")
# What Streamlit looks for in the text itself, after Markdown has undone its escapes, so that no backslash stops it:
# a directive, icon or emoji after a colon (:red[...], :material/bolt:, :smile:, and so http://), an e-mail address,
# www., and the arrows and signs it draws for -> <- <-> -- >= <= ~= standing alone. A word joiner splits each.
_FOUND_IN_TEXT = re.compile(
    r"(?<=:)(?=\S)"  # after a colon
    r"|(?<=@)(?=[-\w])"  # after an e-mail address's @
    r"|(?<=[Ww]{3})(?=\.)"  # between www and its dot
    r"|(?<=(?<!\S)[-<>~])(?=(?:->|[->=])(?!\S))"  # after an arrow's or a sign's first character
)
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]*")  # run names and senders as nnobs writes them


def as_text(value: object, one_line: bool = True) -> str:
    """Any text read from a run's files or sent by a script, as Markdown that Streamlit shows as exactly its
    characters: no image fetched, no link, no HTML, colour, icon, formula or heading. One line (line breaks folded
    into spaces) unless one_line is False, when each line shows as one."""
    lines = str(value).splitlines()
    if one_line:
        return _literal(" ".join(lines).strip())
    return "  \n".join(_literal_line(line) for line in lines)  # two spaces: a line break Markdown keeps


def _literal_line(line: str) -> str:
    """One line of several, its indentation kept: Markdown would drop it, or read four spaces as code."""
    text = line.lstrip(" \t")
    return NO_BREAK_SPACE * (len(line) - len(text)) + _literal(text) if line.strip() else NO_BREAK_SPACE


def _literal(text: str) -> str:
    """One line of text as Markdown that shows it as typed."""
    split = _FOUND_IN_TEXT.sub(WORD_JOINER, text)
    escaped = _SYNTAX.sub(r"\\\g<0>", split)
    return _BLOCK_START.sub(lambda start: start.group() + "\\", escaped, count=1)


def _as_name(name: str) -> str:
    """A run's or a sender's name as Markdown: in a code span when it is made as nnobs makes names, where nothing
    acts; else as_text, as a backtick or a blank line would end a code span."""
    return f"`{name}`" if _PLAIN_NAME.fullmatch(name) else as_text(name)


SYSTEM_TITLES = {  # what each of the machine's figures (schema.SYSTEM_FIGURES) is, on a chart
    "cpu": "CPU (% of one core)",
    "rss_mb": "resident memory (MB)",
    "util": "utilisation (%)",
    "mem_mb": "memory used (MB)",
    "temp_c": "temperature (°C)",
}


def metric_title(name: str, ranked: bool = False) -> str:
    """A metric's chart title: its name, or for the machine's figures what they are ("GPU 0 memory used (MB)"); ranked,
    when a job's other ranks are shown beside it, says rank 0 of figures named without a rank."""
    if not name.startswith(SYSTEM_METRIC):
        return name
    rank = system_parts(name)[0]
    said = f"rank {rank}: " if rank is not None else "rank 0: " if ranked else ""
    return _capitalized(said + _figure_words(name))


def metric_axis_title(name: str) -> str:
    """A metric's y axis title: its name, or for the machine's figures what they measure, without the rank the chart's
    title says ("GPU 0 memory used (MB)")."""
    return _capitalized(_figure_words(name)) if name.startswith(SYSTEM_METRIC) else name


def _figure_words(name: str) -> str:
    """What one of the machine's figures measures ("resident memory (MB)", "GPU 0 utilisation (%)")."""
    _, gpu, figure = system_parts(name)
    what = SYSTEM_TITLES.get(figure, figure)
    return what if gpu is None else f"GPU {gpu} {what}"


def _capitalized(said: str) -> str:
    return said[:1].upper() + said[1:]
