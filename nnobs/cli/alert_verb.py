"""nnobs alert: the rules that send alerts out of a runs root, and the watcher that sends them."""

from __future__ import annotations

import argparse
import shlex

from nnobs.protocol.errors import NnobsError
from nnobs.views.alert_watcher import (
    Outbox,
    folder_of,
    read_rules,
    start_watcher,
    stop_watcher,
    watcher_pid,
    write_rules,
)
from nnobs.views.alerts import DEFAULT_WHEN, Rule


def alert(args: argparse.Namespace) -> int:
    """Add a rule and start the watcher; --off: stop it and forget the rules; neither: say what is set and sent."""
    folder = folder_of(args.runs)
    if args.off:
        stopped = stop_watcher(args.runs)
        write_rules(folder, [])
        (folder / "outbox.jsonl").unlink(
            missing_ok=True
        )  # what waited was for the rules now gone: never theirs to send
        print("alert watcher stopped; no rules" if stopped else "no alert watcher was running; no rules")
        return 0
    if args.start:
        if not read_rules(folder):
            raise NnobsError("no alert rules to watch for: add one with nnobs alert --webhook URL (or --command CMD)")
        print(f"alert watcher: pid {start_watcher(args.runs)}")
        return 0
    if args.webhook is None and args.command is None:
        if args.slack or args.when or args.threshold or args.run:
            raise NnobsError("say where alerts go: --webhook URL or --command CMD")
        return _say_what_is_set(args)
    if args.slack and args.webhook is None:
        raise NnobsError("--slack is a webhook's format: give --webhook URL")
    when = [w.strip() for w in args.when.split(",") if w.strip()] if args.when else list(DEFAULT_WHEN)
    rule = Rule(
        webhook=args.webhook,
        slack=args.slack,
        command=shlex.split(args.command) if args.command is not None else None,
        when=when,
        thresholds=args.threshold,
        runs=args.run,
    )
    rules = [*read_rules(folder), rule]
    write_rules(folder, rules)
    pid = start_watcher(args.runs)
    print(f"alert rule {len(rules)}: {rule.describe()}; the watcher (pid {pid}) looks at every run every 2 s")
    return 0


def _say_what_is_set(args: argparse.Namespace) -> int:
    folder = folder_of(args.runs)
    rules = read_rules(folder)
    pid = watcher_pid(folder)
    print(f"alert watcher: {'pid ' + str(pid) if pid else 'not running'}")
    for number, rule in enumerate(rules, start=1):
        print(f"rule {number}: {rule.describe()}")
    if not rules:
        print("no rules: add one with nnobs alert --webhook URL (or --command CMD)")
    if (folder / "outbox.jsonl").exists():
        outbox = Outbox(folder / "outbox.jsonl")
        outbox.close()
        print(f"alerts: {len(outbox.known) - len(outbox.due)} sent, {len(outbox.due)} waiting")
    return 0
