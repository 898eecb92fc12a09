"""Where the operator password comes from, read through Streamlit's own secrets from real files, and how wrong
guesses are counted, client by client."""

from __future__ import annotations

import pytest
from streamlit import config
from streamlit.runtime.secrets import Secrets

from nnobs.protocol.errors import NnobsError
from nnobs.app.operators import (
    CREDENTIAL_FILE,
    OPEN_WORD,
    PASSWORD_ENV,
    WrongGuesses,
    client_key,
    configured_password,
    may_steer,
    operator_access,
)


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


def test_without_a_password_none_is_configured(secrets_at):
    assert configured_password(secrets_at(None)) is None


def test_the_open_word_lets_everyone_steer_and_makes_no_credential(secrets_at, monkeypatch, tmp_path):
    monkeypatch.setenv(PASSWORD_ENV, OPEN_WORD)
    access = operator_access(secrets_at(None), tmp_path)
    assert access.password is None and may_steer(None, access.password)
    assert not (tmp_path / CREDENTIAL_FILE).exists()


def test_a_configured_password_is_what_steers_and_makes_no_credential(secrets_at, tmp_path):
    access = operator_access(secrets_at('operator_password = "s3cret"'), tmp_path)
    assert access.password == "s3cret" and access.kept_in is None
    assert not (tmp_path / CREDENTIAL_FILE).exists()


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


def test_wrong_guesses_past_the_limit_pause_the_clients_sign_ins_for_the_rest_of_the_minute():
    guesses = WrongGuesses(per_minute=3)
    for second in (0.0, 1.0, 2.0):
        assert guesses.wait_s("stranger", second) == 0
        guesses.add("stranger", second)
    assert guesses.wait_s("stranger", 3.0) == 57.0, "the fourth waits until the first is a minute old"
    assert guesses.wait_s("stranger", 60.0) == 0, "then one more may be checked"
    guesses.add("stranger", 60.0)
    assert guesses.wait_s("stranger", 60.5) == 0.5


def test_one_clients_wrong_guesses_never_make_another_wait():
    guesses = WrongGuesses(per_minute=3)
    stranger, operator = client_key("203.0.113.7", session="a"), client_key("198.51.100.2", session="b")
    for second in range(20):
        guesses.add(stranger, float(second))
    assert guesses.wait_s(stranger, 20.0) > 0
    assert guesses.wait_s(operator, 20.0) == 0, "the operator's password is checked at once"


def test_a_client_is_its_address_or_where_none_is_known_its_session():
    assert client_key("203.0.113.7", session="a") == client_key("203.0.113.7", session="b"), "new sessions buy nothing"
    assert client_key(None, session="a") != client_key(None, session="b"), "no address: each session counts alone"
    assert client_key("::ffff:203.0.113.7", session="a") == client_key("203.0.113.7", session="b"), "IPv4 over IPv6"


def test_an_ipv6_client_is_its_slash_64_which_one_host_holds_whole():
    assert client_key("2001:db8:1:2::7", session="a") == client_key("2001:db8:1:2:ffff::1", session="b")
    assert client_key("2001:db8:1:2::7", session="a") != client_key("2001:db8:1:3::7", session="a")
