"""How the page words a run's numbers, commands and senders, and shows text from a run as the characters typed."""

from __future__ import annotations

import html
import math
import re

import pytest

from nnobs.protocol.commands import command_words
from nnobs.views import wording


@pytest.mark.parametrize("relative, words", [
    (0.0, None), (0.004, None), (-0.009, None),  # flat, or too small to matter
    (None, None), (math.nan, None), (math.inf, None), (-1.0, None), (-1.5, None),  # not meaningful
    (-0.05, "-5.0%"), (0.35, "+35%"), (-0.4, "-40%"),
    (-0.995, "-2.3 decades"), (9.0, "+1.0 decades"),
    (1.7173928538231728e31, "+31.2 decades"),  # a blow-up reads in decades, not as a 33-digit percentage
])
def test_a_loss_change_reads_as_percent_or_decades_and_nothing_when_it_says_nothing(relative, words):
    assert wording.loss_change(relative) == words


def test_a_fall_is_negative_so_streamlit_draws_it_down():
    assert wording.loss_change(-0.9).startswith("-") and wording.loss_change(0.9).startswith("+")


@pytest.mark.parametrize("batch, target, fill, text", [
    (1_000, 4_000, 0.25, "1,000 of 4,000 target batches (25%)"),
    (3_999, 4_000, 3_999 / 4_000, "3,999 of 4,000 target batches (99%)"),
    (20_000, 20_000, 1.0, "20,000 of 20,000 target batches (100%)"),
    (0, 0, 0.0, "The target is 0 batches: raise it to train"),
])
def test_progress_reads_the_batch_against_the_target(batch, target, fill, text):
    assert wording.progress(batch, target) == (fill, text)


def test_progress_past_a_lowered_target_says_so_instead_of_counting_past_it():
    fill, text = wording.progress(2_000_000, 1)
    assert fill == 1.0 and "of 1 target" not in text
    assert text.startswith("Batch 2,000,000 is past the target of 1") and "raised" in text


@pytest.mark.parametrize("by, words", [
    ("page", "from the page"), ("cli", "from the command line"), ("page restart", "by Restart on the page"),
    ("cli stop", "by `nnobs stop`"), ("cli restart", "by `nnobs restart`"), ("", ""),
    ("nightly-job 2", "by `nightly-job 2`"), ("nightly `job`", "by nightly \\`job\\`"),
])
def test_senders_are_named_in_words_everyone_reads_the_same_way(by, words):
    assert wording.sender(by) == words


@pytest.mark.parametrize("cmd, value, words", [
    ("target", 5000, "Target 5,000 batches"), ("eta", 0.05, "Eta 0.05"), ("pace", 0.0, "Pace: flat out"),
    ("pace", 1500.0, "Pace 1,500 batches a second"), ("report_every", 0, "Snapshots only when asked"),
    ("report_every", 2000, "Snapshot every 2,000 batches"), ("tell_state", None, "Snapshot now"),
    ("rewind", 12000, "Rewind to batch 12,000"), ("reinit", None, "Reinitialize with the run's own seed"),
    ("reinit", 7, "Reinitialize with seed 7"), ("shutdown", None, "Shut down"),
    ("target", "abc", "target 'abc'"), ("dance", None, "dance"),
])
def test_commands_are_listed_in_words(cmd, value, words):
    assert command_words(cmd, value) == words


def test_durations():
    assert [wording.duration(s) for s in (0.42, 42, 720, 12600, 172800)] == ["0.4 s", "42 s", "12 min", "3.5 h",
                                                                             "2.0 days"]
    assert wording.ago(-0.1) == "0.0 s ago"


# -- text from a run, shown as typed -------------------------------------------------------------------------------

PLANTED = [
    "![x](http://127.0.0.1:9/x.png) and [a link](http://127.0.0.1:9/)",
    '<img src="http://127.0.0.1:9/x.png"> <b>bold</b> &lt;not a tag&gt; &amp;',
    "`a code span\n\n![after a blank line](http://127.0.0.1:9/y.png)`",
    ":red[coloured] :green-badge[DONE] :material/bolt: :material_bolt: :streamlit: :smile: ::leaf :::container",
    "$x^2$ and $$y$$ cost $5", "http://127.0.0.1:9/bare www.example.com me@example.com <http://127.0.0.1:9/>",
    "# a heading", "> a quote", "- a list", "+ a list", "1. a list", "12) a list", "---", "===", "***",
    "*em* **strong** _em_ __strong__ ~strike~ ~~strike~~ a|b", "[a]: http://127.0.0.1:9/ref", "[^1] footnote",
    "-> <- <-> -- >= <= ~= stay as typed", "back\\slash \\*not emphasis\\* \\", "    four spaces",
    "Traceback:\n    four spaces in\n\n  - then two",
    "__init__.py and snake_case_name", "```\nfenced\n```", "~~~\nfenced\n~~~", "line\r\nbreaks\rof\x0bevery\u2028kind",
]


def commonmark(markdown: str) -> str:
    """HTML from an independent CommonMark parser (markdown-it-py, which Streamlit's own dependencies bring), with
    the GFM tables and strikethrough Streamlit's Markdown also reads."""
    markdown_it = pytest.importorskip("markdown_it")
    return markdown_it.MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(markdown)


def read(paragraph_html: str) -> str:
    """The text a reader sees in one rendered paragraph, the page's unseen word joiners left out."""
    inner = paragraph_html.removeprefix("<p>").removesuffix("</p>\n")
    return html.unescape(inner).replace(wording.WORD_JOINER, "")


@pytest.mark.parametrize("text", PLANTED)
def test_text_from_a_run_is_one_paragraph_of_exactly_its_characters(text):
    shown = commonmark(wording.as_text(text))
    assert re.fullmatch(r"<p>[^<]*</p>\n", shown), f"{text!r} made markup: {shown!r}"
    assert read(shown) == " ".join(text.splitlines()).strip()


@pytest.mark.parametrize("text", PLANTED)
def test_text_of_several_lines_keeps_each_line_and_its_indentation(text):
    shown = commonmark(wording.as_text(text, one_line=False))
    assert re.fullmatch(r"<p>[^<]*(<br />\n[^<]*)*</p>\n", shown), f"{text!r} made markup: {shown!r}"
    lines = [read(line) for line in shown.removeprefix("<p>").removesuffix("</p>\n").split("<br />\n")]
    # The first line's indentation aside: this parser drops the no-break spaces that begin a paragraph.
    assert lines == [indented(line) for line in text.splitlines()] or text.startswith(" ")


def indented(line: str) -> str:
    """A line as read on the page: its indentation in no-break spaces, a blank line one of them."""
    text = line.strip(" \t")
    return wording.NO_BREAK_SPACE * (len(line) - len(line.lstrip(" \t"))) + text if text else wording.NO_BREAK_SPACE


# What Streamlit 1.67's Markdown looks for in the text after Markdown has undone its escapes (its frontend bundle):
# bare addresses made links, icons and its logo drawn, and arrows and signs put in place of -> >= and the like.
FOUND_BY_STREAMLIT = [
    r"(https?://|www(?=\.))([-.\w]+)", r"([-.\w+]+)@([-\w]+(?:\.[-\w]+)+)", r":material_(\w+):", r":streamlit:",
    r"(^|\s)(<->|->|<-|--|>=|<=|~=)(\s|$)",
]


@pytest.mark.parametrize("text", PLANTED)
def test_nothing_streamlit_finds_in_shown_text_is_left_whole(text):
    seen = html.unescape(commonmark(wording.as_text(text)).removeprefix("<p>").removesuffix("</p>\n"))
    for pattern in FOUND_BY_STREAMLIT:
        assert not re.search(pattern, seen, re.IGNORECASE), f"{pattern} finds {text!r}"


@pytest.mark.parametrize("text", PLANTED)
def test_no_directive_formula_or_icon_starts_in_the_markdown(text):
    markdown = wording.as_text(text)
    assert not re.search(r":[A-Za-z]", markdown), "a colour, a badge, an icon or an emoji directive"
    assert not re.search(r"(?<!\\)\$", markdown) and ":material/" not in markdown


def test_plain_messages_are_left_as_they_are():
    for message in ("cannot write run.jsonl: no space left on device", "test_a_pytorch_scripts_page_s0/runs",
                    "Eta must be a number above 0 and at most 1,000,000, not “-1”.", "Target 3,000 batches"):
        assert wording.as_text(message) == message


def test_a_forks_origin_names_a_planted_parent_and_settings_as_text():
    origin = {"run": "![x](http://h/x.png)", "batch": 5, "changed": {"`eta`": ":red[0.3]"}, "parent": {"`eta`": 0.1}}
    said = wording.fork_origin(origin)
    assert said == "Forked from !\\[x\\](http:\u2060//h/x.png) at batch 5, with \\`eta\\` :\u2060red\\[0.3\\] (it had 0.1)"
    assert wording.fork_origin({"run": "base", "batch": 5}) == "Forked from `base` at batch 5"


def test_what_serves_a_script_is_said_in_plain_words_for_tables_and_as_text_for_the_page():
    said = wording.served_by({"argv": ["python", "train.py", "--lr", "0.1"], "cwd": "/home/me"})
    assert said == "script “python train.py --lr 0.1” in /home/me"
    assert wording.served_by({"cwd": "/home/me"}) == "a script in /home/me" and wording.served_by(None) == ""
