"""Who may steer: everyone, unless an operator password is configured; then only those who entered it."""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping

from nnobs.errors import NnobsError

PASSWORD_ENV = "NNOBS_OPERATOR_PASSWORD"
PASSWORD_SECRET = "operator_password"  # the key in .streamlit/secrets.toml


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
