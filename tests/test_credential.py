"""The operator credential a server makes when no password is configured: the file in the runs root, the sign-in link
the console prints, and, in a real browser against real servers, a viewer, an operator signed in by that link, and a
server opened to everyone that says so."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import expect
from streamlit.testing.v1 import AppTest

from conftest import REPO, wait_for
from nnobs.app.operators import (
    CREDENTIAL_FILE,
    OPEN_WORD,
    PASSWORD_ENV,
    TOKEN_PARAM,
    WRONG_GUESSES_PER_MINUTE,
    Access,
    console_notice,
    kept_credential,
    may_steer,
    operator_access,
    server_url,
    sign_in_link,
)
from nnobs.app.widgets import wrong_guesses
from nnobs.launching.lifecycle import start_worker
from nnobs.protocol.errors import NnobsError
from test_browser import (  # noqa: F401  (fixtures)
    browser,
    default_run,
    main_area,
    open_url,
    servers,
    sidebar,
    sidebar_button,
    state_badge,
)

OTHER_USER = 65534  # nobody


@pytest.fixture
def nothing_configured(monkeypatch) -> None:
    """No operator password in the environment; no secrets are passed, so none comes from a secrets file either."""
    monkeypatch.delenv(PASSWORD_ENV, raising=False)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# -- the credential file -------------------------------------------------------------------------------------------


def test_with_nothing_configured_a_credential_only_its_owner_may_read_is_made_in_the_runs_root(
    nothing_configured, tmp_path
):
    root = tmp_path / "runs"  # not there yet: the first page load of a fresh machine
    access = operator_access(None, root)
    kept = root / CREDENTIAL_FILE
    assert access.kept_in == kept and mode_of(kept) == 0o600 and os.lstat(kept).st_uid == os.geteuid()
    assert access.password == kept.read_text().strip() and len(access.password) >= 43, "256 random bits"
    assert not may_steer(None, access.password) and may_steer(access.password, access.password)
    assert sorted(p.name for p in root.iterdir()) == [CREDENTIAL_FILE], "no temporary file left beside it"


def test_the_credential_is_made_once_and_reused_by_every_later_start(nothing_configured, tmp_path):
    first = operator_access(None, tmp_path).password
    modified = os.stat(tmp_path / CREDENTIAL_FILE).st_mtime_ns
    assert operator_access(None, tmp_path).password == first
    assert os.stat(tmp_path / CREDENTIAL_FILE).st_mtime_ns == modified, "not written again"


def test_a_deleted_credential_is_made_anew_and_the_old_one_no_longer_steers(nothing_configured, tmp_path):
    old = operator_access(None, tmp_path).password
    (tmp_path / CREDENTIAL_FILE).unlink()
    new = operator_access(None, tmp_path).password
    assert new != old and not may_steer(old, new)


def test_a_symbolic_link_at_the_credential_is_refused_and_never_followed(tmp_path):
    planted = tmp_path / "planted"
    planted.write_text("chosen by someone else\n")
    planted.chmod(0o600)
    (tmp_path / CREDENTIAL_FILE).symlink_to(planted)
    with pytest.raises(NnobsError, match=r"is a symbolic link, so no one may steer: delete it"):
        kept_credential(tmp_path / CREDENTIAL_FILE)
    assert planted.read_text() == "chosen by someone else\n", "nothing written through the link"


def test_a_credential_group_or_others_may_read_is_refused(tmp_path):
    kept = tmp_path / CREDENTIAL_FILE
    kept_credential(kept)
    kept.chmod(0o640)
    with pytest.raises(NnobsError, match=r"may be read or written by group or others \(mode 0640, where 0600"):
        kept_credential(kept)
    kept.chmod(0o604)
    with pytest.raises(NnobsError, match=r"group or others \(mode 0604"):
        kept_credential(kept)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_another_users_credential_is_refused(tmp_path):
    kept = tmp_path / CREDENTIAL_FILE
    kept_credential(kept)
    os.chown(kept, OTHER_USER, OTHER_USER)
    with pytest.raises(NnobsError, match=rf"belongs to another user \(uid {OTHER_USER}, this server runs as 0\)"):
        kept_credential(kept)


def test_a_fifo_or_an_empty_file_at_the_credential_is_refused_without_waiting(tmp_path):
    kept = tmp_path / CREDENTIAL_FILE
    os.mkfifo(kept, 0o600)
    with pytest.raises(NnobsError, match="is not a regular file"):
        kept_credential(kept)  # returns: a FIFO opened for reading would wait for a writer
    kept.unlink()
    kept.touch(mode=0o600)
    with pytest.raises(NnobsError, match="is empty"):
        kept_credential(kept)


# -- the sign-in link ----------------------------------------------------------------------------------------------


def test_the_sign_in_link_uses_the_servers_address_and_port_and_carries_the_credential():
    assert server_url("", 8501) == "http://localhost:8501", "listening everywhere: this machine's own name"
    assert server_url("0.0.0.0", 8502, base_path="/nnobs/") == "http://localhost:8502/nnobs"
    assert server_url("127.0.0.1", 8501, tls=True) == "https://127.0.0.1:8501"
    assert server_url("::1", 8501) == "http://[::1]:8501"
    link = sign_in_link("http://localhost:8501", "a-b_c")
    assert link == "http://localhost:8501/?token=a-b_c"
    assert parse_qs(urlsplit(link).query) == {TOKEN_PARAM: ["a-b_c"]}


def test_the_console_gives_the_link_for_a_kept_credential_a_warning_when_open_and_nothing_for_a_password(tmp_path):
    kept = console_notice(Access("c0de", kept_in=tmp_path / CREDENTIAL_FILE), "http://localhost:8501")
    assert kept is not None and "http://localhost:8501/?token=c0de" in kept and str(tmp_path / CREDENTIAL_FILE) in kept
    opened = console_notice(Access(None), "http://localhost:8501")
    assert opened is not None and "anyone who can reach its port can steer" in opened and OPEN_WORD in opened
    assert console_notice(Access("a configured password"), "http://localhost:8501") is None


def test_a_wrong_sign_in_link_is_refused_taken_out_of_the_address_and_counted_as_a_guess(
    nothing_configured, tmp_path, monkeypatch
):
    monkeypatch.setenv("NNOBS_RUNS", str(tmp_path))  # holds no run: a viewer's page stops at "no run named default"
    wrong_guesses.clear()  # the server's count, kept across sessions in this process
    page = AppTest.from_file(str(REPO / "app.py"), default_timeout=60)
    for _ in range(WRONG_GUESSES_PER_MINUTE):
        page.query_params[TOKEN_PARAM] = "a guess"
        page.run()
        assert any("The sign-in link was refused. Wrong password." in e.value for e in page.error), page.error
        assert TOKEN_PARAM not in page.query_params, "the token is out of the address"
    page.query_params[TOKEN_PARAM] = (tmp_path / CREDENTIAL_FILE).read_text().strip()
    page.run()
    assert any("Too many wrong passwords from you" in e.value for e in page.error), "the right one waits too"
    assert not any(b.label == "Sign out" for b in page.button) and not (tmp_path / "default").exists()


# -- in a real browser ---------------------------------------------------------------------------------------------

SIGN_IN_LINK = re.compile(r"http://127\.0\.0\.1:(\d+)/\?token=([\w-]+)")


@pytest.mark.browser
@pytest.mark.slow
def test_with_nothing_configured_viewers_watch_and_the_consoles_sign_in_link_makes_an_operator(
    servers, open_url, runs_root
):
    start_worker(default_run(runs_root, target=0))  # started from a shell: a viewer's visit starts nothing
    url = servers.start(**{PASSWORD_ENV: ""})  # no password, and not open to everyone
    viewer = open_url(url)
    expect(state_badge(viewer)).to_have_text("IDLE")
    expect(sidebar(viewer)).to_contain_text("Read-only view")
    expect(sidebar_button(viewer, "Set target")).to_have_count(0)

    found = wait_for(lambda: SIGN_IN_LINK.search(servers.console(url)), what="the sign-in link on the console")
    assert f"http://127.0.0.1:{found[1]}" == url, "the link names the address and port the server listens on"
    assert found[2] == (runs_root / CREDENTIAL_FILE).read_text().strip() and mode_of(runs_root / CREDENTIAL_FILE) == 0o600

    operator = open_url(found[0])
    expect(sidebar_button(operator, "Sign out")).to_be_visible()
    expect(sidebar_button(operator, "Set target")).to_be_visible()
    expect(operator).to_have_url(re.compile(r"^[^?]*\?run=default$"))  # the token is out of the address bar
    expect(sidebar_button(viewer, "Set target")).to_have_count(0)  # the viewer still only watches
    assert servers.console(url).count("?token=") == 1, "said once per server, however many pages open"


@pytest.mark.browser
@pytest.mark.slow
def test_a_server_opened_to_everyone_says_so_on_its_console_and_every_page(servers, open_url, runs_root):
    default_run(runs_root, target=0)
    url = servers.start(**{PASSWORD_ENV: OPEN_WORD})
    page = open_url(url)
    expect(main_area(page)).to_contain_text("Open to everyone")
    expect(sidebar_button(page, "Set target")).to_be_visible()
    page.goto(url + "/overview")
    expect(main_area(page)).to_contain_text("anyone who can reach its port can steer")
    assert "anyone who can reach its port can steer" in servers.console(url)
    assert not (runs_root / CREDENTIAL_FILE).exists(), "no credential is made for a server open to everyone"
