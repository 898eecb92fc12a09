"""W&B's calls over nnobs.Run, for a script written for W&B: `import nnobs.wandb as wandb`, or unchanged under
`nnobs run NAME --wandb -- python train.py`, where its own `import wandb` finds this module for that process alone.

    run = wandb.init(project="mnist", config={"lr": 0.01})
    for step in range(n):
        ...
        wandb.log({"loss": loss, "accuracy": acc})
    wandb.finish()

A W&B step is an nnobs batch (the first step logged is the batch after the one the run resumed from). log() merges
its numbers into the step's row, as W&B does, and the row is logged once the step moves on: its "loss" (else the one
key that ends in "/loss" or "_loss", as "train/loss") as the run's loss, the rest as metrics named as in W&B with "/"
written "." ("val/acc" charts as val.acc). The run's target is the step limit: at it, log() ends the script as stop does.
Stop, from the page or `nnobs stop`, ends the script at its next log() with SystemExit(0),
so its finally blocks run and it exits 0, as W&B's stop ends a run from the web. An uncaught exception is recorded as
the run's crash, with its message.

What W&B offers beyond this (media, tables, artifacts, sweeps, define_metric, save, ...) is accepted and ignored with
one warning each, so a script runs unchanged; the manual lists it.
"""

from __future__ import annotations

import atexit
import math
import re
import sys
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

from nnobs.protocol.errors import NnobsError
from nnobs.training.integrations.metrics import as_number, metric_name
from nnobs.training.sdk import Run as NnobsRun

LOSS_KEY = re.compile(r"(?:.*[/_.])?loss", re.IGNORECASE)  # "loss", "train/loss", "train_loss"
_warned: set[str] = set()


def warn_once(what: str) -> None:
    """A warning on stderr, once per process for each thing nnobs does not do of W&B's."""
    if what not in _warned:
        _warned.add(what)
        warnings.warn(f"nnobs.wandb: {what}", stacklevel=3)


class Summary(dict):
    """run.summary: the figures a run ends with, set by the script (kept for it; nnobs shows its own best loss), by
    key or attribute."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError as err:
            raise AttributeError(key) from err

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value


class Config(Summary):
    """wandb.config: the run's settings, by key or attribute; update() merges more in."""

    def update(self, other: Any = None, allow_val_change: bool = True, **more: Any) -> None:  # type: ignore[override]
        if other is not None:
            super().update(other if isinstance(other, Mapping) else vars(other))  # a dict, or argparse's Namespace
        super().update(more)

    def as_dict(self) -> dict:
        return dict(self)


class WandbRun:
    """What wandb.init returns: log, finish, config, summary, watch and alert, over an nnobs.Run started at the first
    log (so that watch(model) before it gives the Parameters and Layers views)."""

    def __init__(self, name: str, config: Config, project: str | None):
        self.name = self.id = name
        self.project = project
        self.config = config
        self.summary = Summary()
        self._run: NnobsRun | None = None
        self._batches: Iterator[int] | None = None
        self._state: Any = None
        self._tensors: list | None = None
        self._step: int | None = None  # the step of the row being filled
        self._row: dict[str, float] = {}
        self._offset = 0  # the batch the run resumed from: step 0 is the batch after it
        self.finished = False

    # -- what a W&B script calls ------------------------------------------------------------

    @property
    def step(self) -> int:
        return self._step or 0

    def log(self, data: Mapping[str, Any], step: int | None = None, commit: bool | None = None) -> None:
        """Merge data's numbers into the step's row; log the row when the step moves on (commit, or a later step)."""
        if self.finished:
            raise NnobsError("wandb.log after wandb.finish(): start another run with wandb.init()")
        if not isinstance(data, Mapping):
            raise TypeError(f"wandb.log takes a dict of values, not {type(data).__name__}")
        self._started()
        now = self.step
        if step is not None:
            if step < now:
                warn_once(f"step {step} is before step {now}: its values are not logged (W&B does the same)")
                return
            if step > now and self._row:
                self._commit()
            now = step
        self._step = now
        for key, value in data.items():
            number = as_number(value)
            if number is None:
                warn_once(f"{key}: only numbers are charted; {type(value).__name__} values are left out")
                continue
            self._row[str(key)] = number
        if commit or (commit is None and step is None):
            self._commit()
            self._step = now + 1

    def finish(self, exit_code: int | None = None, quiet: bool | None = None) -> None:
        """End the run: the row being filled is logged, a final checkpoint and the shutdown record written."""
        if self.finished:
            return
        self.finished = True
        if self._run is not None:
            # Called in a finally block or a handler while an exception goes up: the script is crashing.
            going_up = sys.exc_info()[1]
            error: BaseException | None = None
            if exit_code:
                error = RuntimeError(f"the script finished with exit code {exit_code}")
            elif isinstance(going_up, Exception):
                error = going_up
            try:
                if self._row and error is None:
                    self._commit()
            finally:
                self._run.close(error)
        _forget(self)

    def watch(
        self,
        models: Any,
        criterion: Any = None,
        log: str | None = "gradients",
        log_freq: int = 1000,
        idx: int | None = None,
        log_graph: bool = False,
    ) -> None:
        """The model's parameters as the run's state vector: the Parameters and Layers views. Before the first log."""
        model = models[0] if isinstance(models, (list, tuple)) and models else models
        if not hasattr(model, "named_parameters"):
            warn_once("watch() takes a PyTorch model; others are not watched")
            return
        if self._run is not None:
            warn_once("watch() after the first log(): its parameters are not shown (call it before)")
            return
        from nnobs.training.integrations.torch import flat_copy  # a model with named_parameters: PyTorch is there

        params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self._tensors = [(name, tuple(p.shape)) for name, p in params]
        self._state = lambda: flat_copy(params)

    def alert(self, title: str, text: str, level: Any = None, wait_duration: Any = None) -> None:
        """An alert: nnobs.Run.alert's, which `nnobs alert` sends on."""
        if self._run is not None:
            self._run.alert(title, text, getattr(level, "value", level) or "INFO")
        else:
            print(f"nnobs.wandb alert: {title}: {text}", file=sys.stderr, flush=True)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        warn_once(f"run.{name} is not supported: ignored")
        return _ignored

    def __enter__(self) -> WandbRun:
        return self

    def __exit__(self, kind, error, tb) -> None:
        self.finish(exit_code=1 if error is not None and not isinstance(error, SystemExit) else None)

    # -- under it ----------------------------------------------------------------------------

    def _started(self) -> None:
        if self._run is not None:
            return
        run = NnobsRun(self.name, state=self._state, tensors=self._tensors)
        run.start()
        self._run, self._batches, self._offset = run, run.batches(), run.session.batch

    def _commit(self) -> None:
        """Log the row at its step's batch, training the run's batches up to it (the control file, pace and target
        are answered there); a stop ends the script."""
        run, row = self._run, self._row
        assert run is not None and self._batches is not None
        self._row = {}
        batch = self._offset + self.step + 1
        while run.session.batch < batch:
            if next(self._batches, None) is None:  # stopped: the page, `nnobs stop`, SIGTERM or Ctrl-C
                self.finish()
                raise SystemExit(0)
        loss_keys = ["loss"] if "loss" in row else [k for k in row if LOSS_KEY.fullmatch(k)]
        loss = row.pop(loss_keys[0]) if len(loss_keys) == 1 else None
        metrics = {metric_name(k): v for k, v in row.items() if math.isfinite(v)}
        if loss is not None:
            run.log(loss, **metrics)
        elif metrics:
            run.session.log_metrics(metrics, run.session.batch)


def _ignored(*args: Any, **kwargs: Any) -> None:
    return None


_current: list[WandbRun] = []


def _forget(run: WandbRun) -> None:
    if run in _current:
        _current.remove(run)


def current() -> WandbRun | None:
    return _current[-1] if _current else None


def init(project: str | None = None, name: str | None = None, config: Any = None, **options: Any) -> WandbRun:
    """Start a run: its name is name, else the project's, else "wandb" (under `nnobs run NAME`, NAME)."""
    ignored = sorted(
        k
        for k in options
        if k
        not in (
            "entity",
            "reinit",
            "dir",
            "mode",
            "job_type",
            "group",
            "tags",
            "notes",
            "save_code",
            "settings",
            "id",
            "resume",
        )
    )
    for key in ignored:
        warn_once(f"init({key}=...) is not supported: ignored")
    if _current and not _current[-1].finished:
        _current[-1].finish()
    settings = Config()
    if config is not None:
        settings.update(config)
    run = WandbRun(name or project or "wandb", settings, project)
    _current.append(run)
    return run


def _end_at_exit() -> None:
    run = current()
    if run is not None:
        run.finish()


def _crash_hook(kind, error, tb) -> None:
    run = current()
    if run is not None and run._run is not None and not run.finished:
        run.finished = True
        run._run.close(error)
        _forget(run)
    _previous_hook(kind, error, tb)


_previous_hook = sys.excepthook
sys.excepthook = _crash_hook
atexit.register(_end_at_exit)
