"""Who may steer: everyone, unless an operator password is configured; then only those who entered it."""

from __future__ import annotations

import hmac
import os
import threading
from collections import deque
from collections.abc import Mapping

from nnobs.protocol.errors import NnobsError

PASSWORD_ENV = "NNOBS_OPERATOR_PASSWORD"
PASSWORD_SECRET = "operator_password"  # the key in .streamlit/secrets.toml
WRONG_GUESSES_PER_MINUTE = 10  # across every session of a server: a person mistypes less, a script far more


def configured_password(secrets: Mapping | None = None) -> str | None:
    """The operator password from secrets, else from $NNOBS_OPERATOR_PASSWORD; None when neither sets one.

    Raises NnobsError when a secrets file exists but cannot be read.
    Read again on every check, so a changed password takes effect at once for every session.
    """
    try:
        password = (secrets or {}).get(PASSWORD_SECRET)
    except FileNotFoundError as err:  # Streamlit's secrets error, for a missing file and a broken one alike
        if getattr(err, "error_id", "no-secrets-found") != "no-secrets-found":
            # A typo in secrets.toml must not switch the password off: no one steers until it is fixed.
            raise NnobsError(f"the secrets file cannot be read, so no one may steer until it is fixed: {err}") from err
        password = None
    password = password or os.environ.get(PASSWORD_ENV)
    return str(password) if password else None


def may_steer(entered: str | None, configured: str | None) -> bool:
    """True when no password is configured, or entered is it (compared in constant time)."""
    if configured is None:
        return True
    return entered is not None and hmac.compare_digest(entered.encode(), configured.encode())


class WrongGuesses:
    """Wrong passwords across every session of a server; past the limit in a minute, no password is checked.

    Correct ones wait too: otherwise a guesser could go on during the pause and learn when it hit.
    """

    def __init__(self, per_minute: int = WRONG_GUESSES_PER_MINUTE):
        self.per_minute = per_minute
        self._times: deque[float] = deque()  # monotonic times of the wrong guesses of the last minute
        self._lock = threading.Lock()  # sessions run on threads of their own

    def wait_s(self, now: float) -> float:
        """Seconds until a password may be checked again; 0 when it may now."""
        with self._lock:
            while self._times and self._times[0] <= now - 60:
                self._times.popleft()
            return 0.0 if len(self._times) < self.per_minute else self._times[0] + 60 - now

    def add(self, now: float) -> None:
        with self._lock:
            self._times.append(now)
