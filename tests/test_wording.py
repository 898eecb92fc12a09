"""How the page words a run's numbers, commands and senders."""

from __future__ import annotations

import math

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
    ("nightly `job`", "by `nightly job`"),
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
