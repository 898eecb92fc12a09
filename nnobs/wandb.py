"""W&B's calls for a script written for W&B: `import nnobs.wandb as wandb` (see nnobs.training.integrations.wandb).

init, log, finish, watch, alert, config, summary and run behave as W&B's; any other name is accepted, warned about
once, and does nothing, so that a script runs unchanged.
"""

from __future__ import annotations

from typing import Any

from nnobs.protocol.errors import NnobsError
from nnobs.training.integrations.wandb import Config, WandbRun, current, init, warn_once

__all__ = ["Config", "WandbRun", "alert", "finish", "init", "log", "watch"]


def _run(call: str) -> WandbRun:
    run = current()
    if run is None:
        raise NnobsError(f"wandb.{call}() before wandb.init(): call wandb.init() first")
    return run


def log(data: Any, step: int | None = None, commit: bool | None = None) -> None:
    """Log a dict of values at the current step (or step): see WandbRun.log."""
    _run("log").log(data, step=step, commit=commit)


def finish(exit_code: int | None = None, quiet: bool | None = None) -> None:
    """End the current run, if any."""
    run = current()
    if run is not None:
        run.finish(exit_code)


def watch(models: Any, *args: Any, **kwargs: Any) -> None:
    """Show the model's parameters: before the first log."""
    _run("watch").watch(models, *args, **kwargs)


def alert(title: str, text: str, level: Any = None, wait_duration: Any = None) -> None:
    """An alert, recorded as an event of the current run."""
    _run("alert").alert(title, text, level)


def __getattr__(name: str) -> Any:
    run = current()
    if name == "run":
        return run
    if name == "config":
        return run.config if run is not None else Config()
    if name == "summary":
        return run.summary if run is not None else {}
    if name.startswith("__"):
        raise AttributeError(name)
    warn_once(f"wandb.{name} is not supported: ignored")
    return _ignored


def _ignored(*args: Any, **kwargs: Any) -> None:
    return None
