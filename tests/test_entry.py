"""Reading what a person typed into a setting field: the value meant, or a refusal that names what is allowed."""

from __future__ import annotations

import pytest

from nnobs.app.entry import EntryError, entry_text, parse_number, read_entry


@pytest.mark.parametrize("typed, meant", [
    ("5000", 5000), ("5,000", 5000), ("1,000,000", 10**6), ("1e6", 10**6), ("1E6", 10**6), ("2.5e3", 2500),
    ("5000.0", 5000), (" 42 ", 42), ("0", 0), ("+7", 7), ("1000000000000", 10**12),
])
def test_a_whole_number_is_read_however_it_is_spelled(typed, meant):
    value = read_entry("target", typed)
    assert value == meant and type(value) is int


@pytest.mark.parametrize("typed", [
    "abc", "", "   ", "1.5", "1e-3", "0.999", "5,00", "50,00,000", "1,0000", ",5", "5000abc", "1e6e2", "nan", "NaN",
    "inf", "-inf", "Infinity", "0x10", "1_000", "--5", "-1", "1e13", "10000000000000", "٣", "1e99999",
])
def test_a_target_that_is_not_a_whole_number_in_range_is_refused_naming_the_range(typed):
    with pytest.raises(EntryError) as refused:
        read_entry("target", typed)
    assert "whole number of batches from 0 to 1,000,000,000,000" in str(refused.value)


def test_a_refusal_quotes_what_was_typed_or_says_it_was_blank():
    with pytest.raises(EntryError, match="not “abc”"):
        read_entry("eta", "abc")
    with pytest.raises(EntryError, match="not blank"):
        read_entry("target", "  ")


def test_the_report_interval_refused_at_ten_to_the_thirteen_names_its_maximum():
    with pytest.raises(EntryError, match=r"to 1,000,000,000,000, not “1e13”"):
        read_entry("report_every", "1e13")


@pytest.mark.parametrize("typed, meant", [("0.05", 0.05), ("5e-2", 0.05), (".5", 0.5), ("1", 1.0), ("1,000", 1000.0)])
def test_eta_takes_any_number_above_zero(typed, meant):
    assert read_entry("eta", typed) == meant


@pytest.mark.parametrize("typed", ["0", "-0.1", "nan", "inf", "1e400", "2e6", "abc", ""])
def test_eta_refuses_zero_negatives_non_numbers_and_huge_values(typed):
    with pytest.raises(EntryError, match="Eta must be a number above 0 and at most 1,000,000"):
        read_entry("eta", typed)


def test_pace_takes_zero_for_flat_out_and_refuses_negatives():
    assert read_entry("pace", "0") == 0.0 and read_entry("pace", "2.5") == 2.5
    with pytest.raises(EntryError, match="from 0 \\(flat out\\)"):
        read_entry("pace", "-1")


def test_a_blank_seed_means_the_runs_own_and_a_fractional_one_is_refused():
    assert read_entry("reinit", "") is None and read_entry("reinit", "7") == 7
    with pytest.raises(EntryError, match="blank \\(the run's own seed\\) or a whole number from 0 to 4,294,967,295"):
        read_entry("reinit", "1.5")
    with pytest.raises(EntryError):
        read_entry("reinit", str(2**32))


def test_rewind_needs_a_whole_batch():
    assert read_entry("rewind", "5,000") == 5000
    with pytest.raises(EntryError, match="The batch to rewind to must be a whole number"):
        read_entry("rewind", "5000.5")


@pytest.mark.parametrize("cmd, value", [("target", 3_000_000), ("report_every", 0), ("eta", 0.1), ("eta", 1e-7),
                                        ("eta", 0.123456789), ("pace", 0.0), ("pace", 250.0), ("rewind", 12)])
def test_what_a_field_shows_reads_back_as_the_same_value(cmd, value):
    assert read_entry(cmd, entry_text(cmd, value)) == value


def test_fields_show_whole_numbers_with_separators_and_floats_without_a_trailing_zero():
    assert entry_text("target", 3_000_000) == "3,000,000" and entry_text("eta", 5.0) == "5"
    assert entry_text("target", None) == ""


def test_parse_number_keeps_fractions_only_when_asked():
    assert parse_number("1.5", whole=False) == 1.5
    with pytest.raises(ValueError):
        parse_number("1.5", whole=True)
