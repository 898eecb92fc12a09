"""Who may steer: those who hold the operator credential (a configured password, else one generated and kept in the
runs root), or everyone on a server explicitly opened to all."""

from __future__ import annotations

import errno
import hmac
import ipaddress
import os
import stat
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from secrets import token_hex, token_urlsafe
from urllib.parse import urlencode

from nnobs.protocol.errors import NnobsError

PASSWORD_ENV = "NNOBS_OPERATOR_PASSWORD"
PASSWORD_SECRET = "operator_password"  # the key in .streamlit/secrets.toml
OPEN_WORD = "none"  # the operator password that means there is none: anyone who reaches the port steers
CREDENTIAL_FILE = ".operator-credential"  # in the runs root, where no run's name starts with a dot
CREDENTIAL_MOST_BYTES = 1024  # a credential is 43 characters; a larger file is no credential of ours
TOKEN_PARAM = "token"  # the sign-in link's query parameter, as Jupyter's
WRONG_GUESSES_PER_MINUTE = 10  # per client: a person mistypes less, a script far more
OPEN_WARNING = (
    f"Open to everyone: this server has no operator credential ({PASSWORD_ENV}={OPEN_WORD}), so anyone who can reach "
    "its port can steer, stop, restart, create and fork runs and start recorded scripts."
)


@dataclass(frozen=True)
class Access:
    """Who may steer this server."""

    password: str | None  # what an operator enters or finds in the sign-in link; None: anyone steers (open mode)
    kept_in: Path | None = None  # the credential file, when the password is the one generated there


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


def operator_access(secrets: Mapping | None, root: Path) -> Access:
    """Who may steer: the configured password's holders, everyone when it is OPEN_WORD, else the holders of the
    credential kept in root (generated there at its first use).

    Raises NnobsError when the secrets file or the credential file cannot be trusted: then no one steers.
    """
    configured = configured_password(secrets)
    if configured == OPEN_WORD:
        return Access(password=None)
    if configured is not None:
        return Access(password=configured)
    kept_in = root / CREDENTIAL_FILE
    return Access(password=kept_credential(kept_in), kept_in=kept_in)


def may_steer(entered: str | None, password: str | None) -> bool:
    """True on a server open to everyone (no password), or when entered is the password (compared in constant time)."""
    if password is None:
        return True
    return entered is not None and hmac.compare_digest(entered.encode(), password.encode())


# -- the credential kept in the runs root --------------------------------------------------------------------------


def kept_credential(path: Path) -> str:
    """The credential kept at path, generated first when there is none.

    Raises NnobsError for a file that someone else could have read, written or planted: a symbolic link, no regular
    file, another user's, one open to group or others, an empty or oversized one.
    """
    try:
        return _read_credential(path)
    except FileNotFoundError:
        _create_credential(path)
        return _read_credential(path)


def _create_credential(path: Path) -> None:
    """A new credential at path, only its owner's to read; nothing changes when one is there already.

    Written whole beside it and then linked into place, so that a server starting at the same moment over the same
    runs root reads either no file or the whole of the one that won, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f"{path.name}.{token_hex(6)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w") as file:
            file.write(token_urlsafe(32) + "\n")  # 256 random bits
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temp, path)  # never follows nor replaces what lies at path
        except FileExistsError:
            pass  # another server made it first: both use that one
    finally:
        os.unlink(temp)


def _read_credential(path: Path) -> str:
    """The credential at path, checked on the open file itself (nothing can be swapped in between check and read);
    FileNotFoundError when there is none."""
    try:
        # O_NONBLOCK: a FIFO planted there must not hang the page until a writer comes.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise  # none yet: kept_credential makes one
    except OSError as err:
        why = "is a symbolic link" if err.errno == errno.ELOOP else f"cannot be read ({err.strerror})"
        raise _untrusted(path, why) from None
    with os.fdopen(fd, "rb") as file:
        _check_private(path, os.fstat(fd))
        content = file.read(CREDENTIAL_MOST_BYTES + 1)
    credential = content.decode(errors="replace").strip()
    if not credential or len(content) > CREDENTIAL_MOST_BYTES:
        raise _untrusted(path, "is empty" if not credential else f"holds more than {CREDENTIAL_MOST_BYTES} bytes")
    return credential


def _check_private(path: Path, status: os.stat_result) -> None:
    """Raise NnobsError unless status is that of a regular file of this user that no one else may read or write."""
    if not stat.S_ISREG(status.st_mode):
        raise _untrusted(path, "is not a regular file")
    if status.st_uid != os.geteuid():
        raise _untrusted(path, f"belongs to another user (uid {status.st_uid}, this server runs as {os.geteuid()})")
    if status.st_mode & 0o077:
        mode = stat.S_IMODE(status.st_mode)
        raise _untrusted(path, f"may be read or written by group or others (mode {mode:04o}, where 0600 is required)")


def _untrusted(path: Path, why: str) -> NnobsError:
    return NnobsError(
        f"the operator credential {path} {why}, so no one may steer: delete it and a new one is made at the next "
        f"page load, or set an operator password"
    )


# -- the sign-in link and what the console says ---------------------------------------------------------------------


def server_url(address: str, port: int, base_path: str = "", tls: bool = False) -> str:
    """Where this machine reaches the server: its listening address, localhost when it listens on every interface."""
    host = address if address not in ("", "0.0.0.0", "::") else "localhost"
    host = f"[{host}]" if ":" in host else host  # an IPv6 address
    path = base_path.strip("/")
    return f"{'https' if tls else 'http'}://{host}:{port}" + (f"/{path}" if path else "")


def sign_in_link(url: str, credential: str) -> str:
    """The link that signs a browser in as an operator: the page at url with the credential as ?token=."""
    return f"{url}/?{urlencode({TOKEN_PARAM: credential})}"


def console_notice(access: Access, url: str) -> str | None:
    """What the server's console says once: the sign-in link to a generated credential, or that anyone may steer;
    nothing for a configured password, which its owner knows."""
    if access.password is None:
        return f"nnobs: {OPEN_WARNING}"
    if access.kept_in is None:
        return None
    return (
        f"nnobs: steering needs the operator credential, kept in {access.kept_in.resolve()} (only you may read it).\n"
        f"nnobs: sign in as an operator by opening {sign_in_link(url, access.password)}"
    )


# -- wrong guesses, counted per client -------------------------------------------------------------------------------


def client_key(address: str | None, session: str) -> str:
    """Whom a wrong guess counts against: the client's address (an IPv6 client's /64, which one host usually holds
    whole), else, where the address is unknown (Streamlit gives none for loopback), the browser session."""
    if address is None:
        return f"session {session}"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return f"address {address}"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is None:
            return f"address {ipaddress.IPv6Network((ip, 64), strict=False)}"
        ip = ip.ipv4_mapped  # an IPv4 client on a dual-stack socket: the same client as over IPv4
    return f"address {ip}"


class WrongGuesses:
    """Wrong passwords of the last minute, per client; past the limit, none of that client's passwords is checked.

    Per client, so a stranger's guesses never hold up the operator. Correct ones wait too: otherwise a guesser could
    go on during the pause and learn when it hit.
    """

    def __init__(self, per_minute: int = WRONG_GUESSES_PER_MINUTE):
        self.per_minute = per_minute
        self._times: dict[str, deque[float]] = {}  # by client key: monotonic times of its wrong guesses
        self._lock = threading.Lock()  # sessions run on threads of their own

    def wait_s(self, client: str, now: float) -> float:
        """Seconds until a password from client may be checked again; 0 when it may now."""
        with self._lock:
            self._forget_before(now - 60)
            times = self._times.get(client)
            return 0.0 if times is None or len(times) < self.per_minute else times[0] + 60 - now

    def add(self, client: str, now: float) -> None:
        with self._lock:
            self._forget_before(now - 60)
            self._times.setdefault(client, deque()).append(now)

    def _forget_before(self, then: float) -> None:
        """Drop guesses older than then, and the clients left with none, so many passing clients cost no memory."""
        for client, times in list(self._times.items()):
            while times and times[0] <= then:
                times.popleft()
            if not times:
                del self._times[client]
