"""`python -m bench`: every benchmark figure, side by side, as one table.

`python -m bench --markdown docs/bench-figures.md [SECTION ...]` also writes the table there: the manual's
performance page includes that file, so the figures it shows are the bench's own output.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

from bench import (
    alerts,
    cold_open,
    ddp,
    frameworks,
    lab,
    large_model,
    large_net,
    latency,
    log_cost,
    page_cost,
    pbt,
    shared_fs,
    torch_loop,
    training,
    viewers,
    views,
)


def main() -> None:
    rows = []

    def say(name, value, goal, met, context):
        shown = "n/a" if value is None else f"{value:,.2f}" if value < 100 else f"{value:,.0f}"
        verdict = "" if met is None else "met" if met else "NOT met"
        rows.append((name, shown, goal, verdict, context))
        print(f"  {name}: {shown} ({goal}) {verdict}", file=sys.stderr, flush=True)

    start = time.perf_counter()
    print(f"nnobs benchmarks on {platform.machine()}, Python {platform.python_version()}", file=sys.stderr)
    sections = (training, log_cost, torch_loop, frameworks, ddp, large_model, page_cost, large_net, latency, cold_open, lab, viewers, shared_fs, alerts, pbt, views)
    args = sys.argv[1:]
    markdown = None
    if "--markdown" in args:
        at = args.index("--markdown")
        markdown, args = args[at + 1], args[:at] + args[at + 2 :]
    chosen = args  # `python -m bench training torch_loop`: only those sections
    for section in (s for s in sections if not chosen or s.__name__.split(".")[-1] in chosen):
        print(f"{section.__name__} ...", file=sys.stderr, flush=True)
        section.figures(say)
    header = ("figure", "measured", "goal", "", "context")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(5)]
    table = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|",
             *("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |" for row in rows)]
    print()
    print("\n".join(table))
    took = time.perf_counter() - start
    print(f"\n({took:.0f} s)")
    if markdown:
        command = " ".join(["python -m bench", *chosen])
        machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        said = f"Measured by `{command}` on {time.strftime('%Y-%m-%d')} ({machine}, {took:.0f} s):"
        Path(markdown).write_text(said + "\n\n" + "\n".join(table) + "\n")


if __name__ == "__main__":
    main()
