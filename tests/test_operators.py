"""Where the operator password comes from, read through Streamlit's own secrets from real files."""

from __future__ import annotations

import pytest
from streamlit import config
from streamlit.runtime.secrets import Secrets

from nnobs.protocol.errors import NnobsError
from nnobs.app.operators import PASSWORD_ENV, WrongGuesses, configured_password, may_steer


@pytest.fixture
def secrets_at(tmp_path, monkeypatch):
    """secrets_at(text or None): Streamlit secrets read from one secrets.toml holding text (None: no file)."""
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    path = tmp_path / "secrets.toml"
    original = config.get_option("secrets.files")
    config.set_option("secrets.files", [str(path)])

    def make(text: str | None) -> Secrets:
        if text is not None:
            path.write_text(text)
        return Secrets()

    yield make
    config.set_option("secrets.files", original)


def test_without_a_password_everyone_steers(secrets_at):
    assert configured_password(secrets_at(None)) is None
    assert may_steer(None, None)


def test_the_secret_is_the_password_and_wins_over_the_environment(secrets_at, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, "from the environment")
    assert configured_password(secrets_at('operator_password = "from secrets"')) == "from secrets"
    assert configured_password(secrets_at('other_secret = "not the password"')) == "from the environment"


def test_only_the_password_itself_steers():
    assert may_steer("s3cret", "s3cret")
    assert not may_steer(None, "s3cret") and not may_steer("", "s3cret") and not may_steer("s3cre", "s3cret")


def test_a_broken_secrets_file_locks_steering_instead_of_switching_the_password_off(secrets_at):
    broken = secrets_at('operator_password = "unclosed')
    with pytest.raises(NnobsError, match="the secrets file cannot be read, so no one may steer"):
        configured_password(broken)


def test_wrong_guesses_past_the_limit_pause_every_sign_in_for_the_rest_of_the_minute():
    guesses = WrongGuesses(per_minute=3)
    for second in (0.0, 1.0, 2.0):
        assert guesses.wait_s(second) == 0
        guesses.add(second)
    assert guesses.wait_s(3.0) == 57.0, "the fourth waits until the first is a minute old"
    assert guesses.wait_s(60.0) == 0, "then one more may be checked"
    guesses.add(60.0)
    assert guesses.wait_s(60.5) == 0.5
