"""Making runs: a new one from a config, and a fork of another run's checkpoint with settings changed."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time

from nnobs.launching.lifecycle import launcher_for, start_worker
from nnobs.protocol.checkpoint import Checkpoint, kept_batches, landing, load_checkpoint, load_kept, save_checkpoint
from nnobs.protocol.commands import check_command
from nnobs.protocol.errors import CommandError, NnobsError
from nnobs.protocol.files import create_once
from nnobs.protocol.jobs import JobRecord, LauncherSettings, record_launcher
from nnobs.protocol.rundir import RunDir
from nnobs.reading.origin import FORK_FILE
from nnobs.training.builtin.tasks import RunConfig, load_config


def new_run(
    run: RunDir, config: RunConfig, by: str = "", launcher: LauncherSettings | None = None, start: bool = True
) -> int | JobRecord | None:
    """Create a run of the built-in worker that trains config, under launcher (local by default), and start it
    unless told not to: its pid, or on Slurm its job.

    Refused before anything is written when the name is taken, the config cannot be trained or the launcher's
    settings cannot be used.
    """
    config.check()
    if launcher is not None:
        launcher.check()
        launcher_for(launcher)  # loadable here (its extra installed), before anything is written
    _make_dir(run)
    try:
        create_once(run.config, config.to_json().encode())
        if launcher is not None:
            record_launcher(run.launcher_file, launcher)
    except OSError as err:
        _remove(run)
        raise NnobsError(f"cannot create run {run.name} in {run.path.parent}: {err}") from err
    return start_worker(run, by=by) if start else None


def fork_run(
    parent: RunDir,
    new: RunDir,
    eta: float | None = None,
    target: int | None = None,
    at: int | None = None,
    by: str = "",
) -> int | JobRecord:
    """Start new from parent's latest checkpoint (or its newest kept one at or before batch at) with eta and target
    changed; the pid of its worker. Nothing is created when the fork cannot be made."""
    if new.exists():  # said first: the name is what the user can fix at once
        raise NnobsError(f"{new.name} exists already in {new.path.parent}: pick another name")
    eta = None if eta is None else _checked("eta", eta)
    target = None if target is None else _checked("target", target)
    config, ckpt = _fork_point(parent, at)
    changed = {k: v for k, v in (("eta", eta), ("target", target)) if v is not None}
    # The new run's first worker resumes from this checkpoint as from its own: a fresh generation count, a fresh
    # control file, a run file that starts empty, and the changed settings in place of the parent's.
    ckpt_before = ckpt
    ckpt = dataclasses.replace(
        ckpt,
        gen=0,
        last_seq=0,
        control_id=None,
        run_offset=0,
        eta=changed.get("eta", ckpt.eta),
        target=changed.get("target", ckpt.target),
    )
    origin = {
        "run": parent.name,
        "batch": ckpt.batch,
        "t": time.time(),
        "changed": changed,
        "parent": {"eta": ckpt_before.eta, "target": ckpt_before.target},
    }
    # A fork given its own eta leaves its parent's eta schedule behind: the schedule's next step would undo it.
    schedule = None if "eta" in changed else config.eta_schedule
    config = dataclasses.replace(config, eta=ckpt.eta, target=ckpt.target, eta_schedule=schedule)
    _make_dir(new)
    try:
        create_once(new.config, config.to_json().encode())
        save_checkpoint(new.checkpoint, ckpt)
        create_once(new.path / FORK_FILE, json.dumps(origin, indent=1).encode())
    except OSError as err:
        _remove(new)
        raise NnobsError(f"cannot create the fork {new.name} in {new.path.parent}: {err}") from err
    return start_worker(new, by=by)


def _fork_point(parent: RunDir, at: int | None) -> tuple[RunConfig, Checkpoint]:
    """The parent's config and the checkpoint a fork starts from; NnobsError when there is none to start from."""
    if not parent.exists():
        raise NnobsError(f"there is no run named {parent.name} in {parent.path.parent} to fork")
    if not parent.config.exists():
        raise NnobsError(
            f"{parent.name} is served by a script: only runs of the built-in worker can be forked, "
            "since nnobs cannot start a copy of the script"
        )
    config = load_config(parent.config)
    most_state_bytes = config.n_params * 8  # float64s: a checkpoint declaring more is none of this run's
    if at is None:
        ckpt = load_checkpoint(parent.checkpoint, most_state_bytes)
        if ckpt is None:
            raise NnobsError(f"{parent.name} has no checkpoint yet: start it, and fork once it has trained a little")
        return config, ckpt
    at = _checked("rewind", at)
    ckpt = load_kept(parent.checkpoint, at, most_state_bytes)
    if ckpt is None:
        kept = kept_batches(parent.checkpoint)
        where = f"the oldest kept is at batch {kept[0]:,}" if kept else "none are kept yet"
        raise NnobsError(f"{parent.name} keeps no checkpoint at or before batch {at:,}: {where}")
    return config, ckpt


@dataclasses.dataclass(frozen=True)
class Landing:
    """Where going back to a batch (a rewind, a fork --at) lands: the newest kept checkpoint at or before it."""

    asked: int
    landed: int | None  # None: no checkpoint is kept at or before the batch asked
    now: int  # the run's batch now: 0 for a fork, which throws nothing away

    @property
    def drops_most(self) -> bool:
        """Whether a rewind there throws away more than half of the run's batches."""
        return self.landed is not None and self.now - self.landed > self.now / 2

    @property
    def far_below_asked(self) -> bool:
        """Whether it starts under half of the batch asked: a fork would train most of those batches again."""
        return self.landed is not None and self.landed < self.asked / 2

    def words(self) -> str:
        """Where it lands, in a sentence."""
        if self.landed is None:
            return f"no checkpoint is kept at or before batch {self.asked:,}"
        earlier = self.asked - self.landed
        return f"batch {self.asked:,} lands on the checkpoint kept at batch {self.landed:,}" + (
            f", {earlier:,} batches before it" if earlier else ""
        )


def landing_of(run: RunDir, asked: int, now: int = 0) -> Landing:
    """Where a rewind or fork of run to batch asked lands, said before it is done; now is the run's batch (what a
    rewind throws away is counted from it)."""
    return Landing(asked, landing(run.checkpoint, asked), now)


def _checked(cmd: str, value):
    try:
        return check_command(cmd, value)
    except CommandError as err:
        raise NnobsError(str(err)) from err


def _make_dir(run: RunDir) -> None:
    """Claim the name: of two makers at once, one makes the directory and the other is refused."""
    try:
        run.path.mkdir(parents=True)
    except FileExistsError as err:
        raise NnobsError(f"{run.name} exists already in {run.path.parent}: pick another name") from err
    except OSError as err:
        raise NnobsError(f"cannot create run {run.name} in {run.path.parent}: {err}") from err


def _remove(run: RunDir) -> None:
    shutil.rmtree(run.path, ignore_errors=True)
