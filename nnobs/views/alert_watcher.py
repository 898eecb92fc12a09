"""The alert watcher: a small detached process per runs root that tells the rules' webhooks and commands what
happened to its runs, whether or not a page is open and whether or not a run's worker still lives.

Its files are in the root's .alerts folder: rules.json (what `nnobs alert` set), seen.json (the state each run was
last seen in), outbox.jsonl (each alert written there before it is sent, and a line once it was) and watcher.lock
(held while it lives, its pid in it). An alert is decided once, by its key; one written to the outbox and not yet
sent when the watcher was killed is sent by the next. Each rule sends at most RATE_PER_MINUTE a minute; the rest wait
in the outbox, never dropped.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Any

from nnobs.launching.daemon import daemon_pid, hold_lock, start_daemon, stop_daemon
from nnobs.protocol.errors import NnobsError
from nnobs.protocol.files import open_fd, open_file, replace_atomically
from nnobs.protocol.jsontext import parse_json
from nnobs.protocol.rundir import RunDir, runs_root
from nnobs.views.alerts import Alert, Rule, alerts_of
from nnobs.views.overview import history_of, run_rows

POLL_S = 2.0  # how often the runs are looked at: an alert goes out within this of the page's showing it
RATE_PER_MINUTE = 10  # alerts a rule sends a minute at most
SEND_TIMEOUT_S = 5.0
FOLDER = ".alerts"


def folder_of(root: str | os.PathLike | None) -> Path:
    return runs_root(root) / FOLDER


def read_rules(folder: Path) -> list[Rule]:
    try:
        with open_file(folder / "rules.json") as f:
            found = parse_json(f.read().decode())
        return [Rule(**rule) for rule in found]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, TypeError, NnobsError) as err:
        raise NnobsError(
            f"{folder / 'rules.json'} is unreadable ({err}): set the rules again with nnobs alert"
        ) from err


def write_rules(folder: Path, rules: list[Rule]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    content = json.dumps([rule.as_dict() for rule in rules], indent=1).encode()
    replace_atomically(folder / "rules.json", lambda f: f.write(content))


def watcher_pid(folder: Path) -> int | None:
    """The live watcher's pid, or None when none holds watcher.lock (-1 while its pid is not written yet)."""
    return daemon_pid(folder / "watcher.lock")


def start_watcher(root: str | os.PathLike | None) -> int:
    """Start the root's watcher detached unless one lives; its pid."""
    folder = folder_of(root)
    args = [str(runs_root(root))]
    return start_daemon(
        "nnobs.views.alert_watcher", args, folder / "watcher.lock", folder / "watcher.log", "alert watcher"
    )


def stop_watcher(root: str | os.PathLike | None) -> bool:
    """End the root's watcher; whether one was alive."""
    return stop_daemon(folder_of(root) / "watcher.lock")


class Outbox:
    """outbox.jsonl: each alert appended before it is sent ({"due": ...}), then {"sent": key, "rule": i}."""

    def __init__(self, path: Path):
        self.path = path
        self.due: dict[tuple[str, int], Alert] = {}  # (key, rule) -> alert, in the order they came
        self.known: set[tuple[str, int]] = set()  # every (key, rule) ever written: decided once
        self.sent_at: dict[int, list[float]] = {}  # rule -> monotonic times of its sends in the last minute
        try:
            with open_file(path) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            lines = []
        for line in lines:
            try:
                entry = json.loads(line)
                if "due" in entry:
                    alert, rule = Alert(**entry["due"]), int(entry["rule"])
                    self.known.add((alert.key, rule))
                    self.due[(alert.key, rule)] = alert
                else:
                    self.due.pop((str(entry["sent"]), int(entry["rule"])), None)
            except (ValueError, KeyError, TypeError):
                continue  # a line torn by a kill: the alert it began is decided again, or was sent
        self._fd = open_fd(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def add(self, alert: Alert, rule: int) -> None:
        if (alert.key, rule) in self.known:
            return
        self.known.add((alert.key, rule))
        self.due[(alert.key, rule)] = alert
        self._write({"due": asdict(alert), "rule": rule})

    def send_due(self, rules: list[Rule]) -> None:
        now = time.monotonic()
        for (key, index), alert in list(self.due.items()):
            if index >= len(rules):
                continue  # its rule was taken away: kept, sent if it comes back
            recent = [t for t in self.sent_at.get(index, []) if now - t < 60]
            if len(recent) >= RATE_PER_MINUTE:
                self.sent_at[index] = recent
                continue
            if deliver(rules[index], alert):
                self.sent_at[index] = [*recent, now]
                del self.due[(key, index)]
                self._write({"sent": key, "rule": index})

    def _write(self, entry: dict) -> None:
        try:
            os.write(self._fd, json.dumps(entry).encode() + b"\n")
        except OSError as err:  # a full disk: the alert is still held here, and sent; said once a look at most
            print(f"nnobs alert: cannot write {self.path} ({err})", file=sys.stderr, flush=True)

    def close(self) -> None:
        os.close(self._fd)


def page_url(run: str) -> str:
    base = os.environ.get("NNOBS_PAGE_URL") or f"http://{socket.getfqdn()}:8501/"
    return f"{base.rstrip('/')}/?run={run}"


def payload(rule: Rule, alert: Alert) -> dict[str, Any]:
    """Slack's incoming-webhook JSON ({"text": ...}), or the alert as plain JSON with the page's URL."""
    url = page_url(alert.run)
    if rule.slack:
        text = alert.text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")  # no <!channel> from a run
        return {"text": f"nnobs: {text} (<{url}|open the run>)"}
    said = asdict(alert)
    return {"id": said.pop("key"), **said, "url": url}  # id: a receiver may drop one it already has


def deliver(rule: Rule, alert: Alert) -> bool:
    """Send one alert; False when it could not go (it stays due, and is tried again)."""
    body = json.dumps(payload(rule, alert)).encode()
    try:
        if rule.webhook is not None:
            request = urllib.request.Request(rule.webhook, body, {"Content-Type": "application/json"}, method="POST")
            with urllib.request.urlopen(request, timeout=SEND_TIMEOUT_S) as answer:
                return 200 <= answer.status < 300
        assert rule.command is not None
        done = subprocess.run(
            rule.command,
            input=body,
            timeout=60,
            capture_output=True,
            env={**os.environ, "NNOBS_ALERT_TEXT": alert.text, "NNOBS_ALERT_RUN": alert.run},
        )
        return done.returncode == 0
    except Exception as err:  # a webhook or command that fails in any way is tried again, never ends the watcher
        if alert.key not in _said_unsent:  # once in watcher.log, not at every look while a webhook is down
            _said_unsent.add(alert.key)
            print(f"nnobs alert: {alert.key} not sent ({err}); tried again at each look", file=sys.stderr, flush=True)
        return False


_said_unsent: set[str] = set()


def watch(root: Path) -> None:
    """Look at every run every POLL_S until told to stop; alerts decided, written, then sent."""
    folder = root / FOLDER
    seen_file = folder / "seen.json"
    try:
        with open_file(seen_file) as f:
            seen: dict[str, dict] = parse_json(f.read().decode())
        baseline = not (isinstance(seen, dict) and all(isinstance(v, dict) for v in seen.values()))
    except (OSError, ValueError):
        baseline = True  # the first look ever: how the runs are is no news
    if baseline:
        seen = {}
    outbox = Outbox(folder / "outbox.jsonl")
    rules: list[Rule] = []
    while True:
        try:
            rules = read_rules(folder)
        except NnobsError as err:  # rules.json broken by hand: the last good rules go on, and it is said
            print(f"nnobs alert: {err}; the rules read before go on", file=sys.stderr, flush=True)
        limits = [limit for rule in rules for limit in rule.limits]
        now = time.time()
        for row in run_rows(root, now):
            history = history_of(RunDir.named(row.name, root))
            found = alerts_of(row, history, seen.setdefault(row.name, {}), limits, now, baseline)
            for alert in found:
                for index, rule in enumerate(rules):
                    if rule.wants(alert):
                        outbox.add(alert, index)
        _save(seen_file, seen)  # after the outbox: a kill between the two decides the same alerts again, and drops them
        outbox.send_due(rules)
        baseline = False
        time.sleep(POLL_S)


def _save(path: Path, seen: dict) -> None:
    content = json.dumps(seen).encode()
    replace_atomically(path, lambda f: f.write(content))


def main() -> None:
    root = Path(sys.argv[1])
    folder = root / FOLDER
    hold_lock(folder / "watcher.lock", "an alert watcher lives already for this runs root")
    print(f"nnobs alert watcher {os.getpid()} for {root}", flush=True)
    try:
        watch(root)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
