"""nnobs.Run: any training loop, watched and steered through its run directory as the built-in worker is.

import nnobs
with nnobs.Run("my-run", state=lambda: params, on_eta=set_lr) as run:
    for batch in run.batches():
        loss = train_one_batch(lr=run.eta)
        run.log(loss, accuracy=acc)
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from nnobs.protocol.checkpoint import KEPT_MB, State
from nnobs.protocol.commands import DEFAULT_MIN_FREE_MB, check_command, check_eta_schedule
from nnobs.protocol.errors import CommandError, MetricError, NnobsError
from nnobs.protocol.events import EventKind
from nnobs.protocol.files import replace_atomically
from nnobs.protocol.jobs import LAUNCHER_ENV, recorded_for_another_job
from nnobs.protocol.jsontext import parse_json
from nnobs.protocol.numbers import is_finite
from nnobs.protocol.rundir import RunDir, local_pid
from nnobs.protocol.schema import Tensors
from nnobs.protocol.slot import tell_log
from nnobs.training.builtin.nn import Fact, Network, ReluLayer
from nnobs.training.builtin.sampler import Sampler
from nnobs.training.ownership import claim
from nnobs.training.ranks import Follower, Leader, SharedTrainer, job_group
from nnobs.training.session import Session, Settings
from nnobs.training.trainer import Trainer

RUN_DIR_ENV = "NNOBS_RUN_DIR"  # set by the launcher: the run a script started by nnobs serves, whatever its code names
STARTED_BY_ENV = "NNOBS_STARTED_BY"  # who asked for the start ("page", "cli"), as the launcher was told


class RunBusy(NnobsError):
    """The run already has a live worker."""


class RunTaken(RunBusy):
    """The run is recorded for another Slurm job than the one this process runs in."""


class HookTrainer(Trainer):
    """A trainer made of a script's functions: state() gives the parameters, on_eta takes a new learning rate,
    save(path) and load(path) write and read the script's own checkpoint file."""

    def __init__(
        self,
        state: Callable[[], np.ndarray] | None,
        on_eta: Callable[[float], None] | None,
        save: Callable[[str], None] | None,
        load: Callable[[str], None] | None,
        tensors: Tensors | None,
        eta: float,
    ):
        self._state, self._on_eta, self._save, self._load = state, on_eta, save, load
        self._eta = float(eta)
        self.can_load = load is not None
        width = len(self.state_vector())
        self.tensors = tensors or ([("p", (width,))] if width else [])

    @property
    def eta(self) -> float:
        return self._eta

    @eta.setter
    def eta(self, value: float) -> None:
        self._eta = float(value)
        if self._on_eta is not None:
            self._on_eta(self._eta)

    def state_vector(self) -> np.ndarray:
        if self._state is None:
            return np.empty(0)
        return np.array(self._state(), dtype=float).ravel()  # a copy: the script goes on changing its own

    def save(self) -> State:
        if self._save is None:
            return {}
        return {"script": np.frombuffer(through_file(self._save), dtype=np.uint8)}

    def load(self, saved: dict[str, np.ndarray]) -> None:
        if "script" not in saved:
            raise ValueError("the checkpoint holds no state saved by a script")
        if self._load is None:
            raise ValueError("this run's script gives no load function")
        through_file(self._load, saved["script"].tobytes())


class NetTrainer(Trainer):
    """A numpy net with the notebook library's API (eta, state_vector, set_state_from_vector; losses for loss_now).

    next_batch, when given, is the task's; sampler, when given, is where it draws from, and its state is
    checkpointed with the net's so that a resumed run reads the batches it would have. loss_facts are the
    points the loss of the net as it is is measured on (all the training points: drawing a batch for it
    would move the sampler), test_facts those of the test loss.
    """

    can_load = True

    def __init__(
        self,
        net: Network,
        next_batch: Callable[[], Fact] | None = None,
        tensors_: list | None = None,
        reinit: Callable[[int | None], tuple[Network, int]] | None = None,
        *,
        sampler: Sampler | None = None,
        loss_facts: Fact | None = None,
        test_facts: Fact | None = None,
    ):
        self.net, self.next_batch, self._reinit = net, next_batch, reinit
        self.tensors = tensors_ or _layer_tensors(net)
        self.sampler, self.loss_facts, self.test_facts = sampler, loss_facts, test_facts

    @property
    def eta(self) -> float:
        return self.net.eta

    @eta.setter
    def eta(self, value: float) -> None:
        self.net.eta = value

    def state_vector(self) -> np.ndarray:
        return np.array(self.net.state_vector(), dtype=float)

    def save(self) -> State:
        saved = {"sv": self.state_vector()}
        if self.sampler is not None:  # JSON in a string array, as the checkpoint's meta: loadable without pickle
            saved["sampler"] = np.array(json.dumps(self.sampler.state()))
        return saved

    def load(self, saved: dict[str, np.ndarray]) -> None:
        if "sv" not in saved:
            raise ValueError("the checkpoint holds no state vector")
        sampler, sampler_state = self.sampler, None
        if sampler is not None and "sampler" in saved:
            try:
                sampler_state = parse_json(str(saved["sampler"]))
            except ValueError as err:
                raise ValueError(f"the checkpoint's sampler state is not JSON ({err})") from err
        if sampler is not None and sampler_state is not None:
            before = sampler.state()
            sampler.restore(sampler_state)  # refuses, changing nothing, a state of another training set
            try:
                self.net.set_state_from_vector(saved["sv"])
            except ValueError:
                sampler.restore(before)  # a load that fails leaves the trainer as it was
                raise
            return
        self.net.set_state_from_vector(saved["sv"])
        if self.sampler is not None:
            tell_log(
                "nnobs: the checkpoint holds no sampler state (it is older than the sampler): batches are drawn "
                "afresh from the run's seed"
            )

    def reinit(self, seed: int | None) -> int:
        if self._reinit is None:
            return super().reinit(seed)
        fresh, used = self._reinit(seed)
        self.net.set_state_from_vector(fresh.state_vector())
        self.net.eta = fresh.eta  # the starting step size, as for a new run
        return used

    def loss_now(self) -> float | None:
        if self.loss_facts is not None:
            return float(self.net.losses([self.loss_facts])[0])
        if self.next_batch is None or self.sampler is not None:
            return None
        return float(self.net.losses([self.next_batch()])[0])

    def dead_units(self) -> list[int] | None:
        if self.loss_facts is None:
            return None
        x, dead = self.loss_facts[0], []
        for layer in self.net.layers:
            x = layer(x)
            if isinstance(layer, ReluLayer):
                dead.append(int((x.max(axis=0) <= 0).sum()))
        return dead or None

    def test_loss(self) -> float | None:
        """The loss on the test points, when there are any."""
        if self.test_facts is None or not len(self.test_facts[0]):
            return None
        return float(self.net.losses([self.test_facts])[0])


def _layer_tensors(net) -> Tensors:
    """Per affine layer its weights and biases (L1.W, L1.b, ...) when the net's layers say their shapes, else one "p"."""
    parts: Tensors = []
    for layer in getattr(net, "layers", []):
        weights = getattr(layer, "W", getattr(layer, "M", None))
        biases = getattr(layer, "b", None)
        if weights is not None and biases is not None:
            number = len(parts) // 2 + 1
            parts += [(f"L{number}.W", tuple(np.shape(weights))), (f"L{number}.b", tuple(np.shape(biases)))]
    width = len(net.state_vector())
    if sum(int(np.prod(shape)) for _, shape in parts) != width:
        return [("p", (width,))]
    return parts


def attach(net) -> NetTrainer:
    """The trainer for nnobs.Run(trainer=...) of a numpy net with the notebook library's API."""
    return NetTrainer(net)


def through_file(hook: Callable[[str], None], content: bytes | None = None) -> bytes:
    """Call a save(path) hook and return what it wrote, or write content and call a load(path) hook with it."""
    with tempfile.TemporaryDirectory(prefix="nnobs-") as folder:
        path = os.path.join(folder, "checkpoint")
        if content is not None:
            Path(path).write_bytes(content)
        hook(path)
        return Path(path).read_bytes() if content is None else b""


class Run:
    """A run of your own training loop: start it, iterate over batches(), log() each loss.

    name: the run's name under the runs root (--runs, $NNOBS_RUNS, else ./runs); a script started by
    `nnobs run NAME` serves NAME whatever name its code gives. Then either a trainer
    (nnobs.torch.attach(model, optimizer), nnobs.attach(net)) or functions: state() returns the
    parameters as one array, on_eta(eta) sets the learning rate, save(path)/load(path) write and read
    your own checkpoint so that a restart resumes your state. eta, target, report_every and pace are
    the settings a fresh run starts with; a resumed run goes on with those its checkpoint holds. At its target
    the loop ends (the run reads stopped; raise the target and restart it to go on), as a framework's max_steps
    ends training; wait_at_target=True idles there instead, answering the page, until the target is raised.
    Training pauses (LOW DISK) while the run's filesystem has less than min_free_mb free. The checkpoints kept to
    rewind and fork to take at most kept_mb MiB on disk (256: a model of tens of millions of parameters keeps few).
    eta_schedule, [(batch, eta), ...], sets eta as the run passes each batch (a population's found schedule, say);
    an eta set by hand holds until the next step.
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        trainer: Trainer | None = None,
        state: Callable[[], np.ndarray] | None = None,
        on_eta: Callable[[float], None] | None = None,
        save: Callable[[str], None] | None = None,
        load: Callable[[str], None] | None = None,
        tensors: Tensors | None = None,
        eta: float | None = None,
        target: int = 2_000_000,
        report_every: int = 2_000,
        pace: float = 0.0,
        min_free_mb: float = DEFAULT_MIN_FREE_MB,
        kept_mb: float = KEPT_MB,
        wait_at_target: bool = False,
        eta_schedule: list | None = None,
        root: str | os.PathLike | None = None,
        builtin: bool = False,
    ):
        launched = os.environ.get(RUN_DIR_ENV)
        if launched:
            self.run_dir = RunDir(Path(launched))
        elif name is None:
            raise NnobsError("nnobs.Run needs the run's name (or a start by `nnobs run NAME -- ...`)")
        else:
            self.run_dir = RunDir.named(name, root)
        if trainer is None:
            trainer = HookTrainer(state, on_eta, save, load, tensors, 0.1 if eta is None else eta)
        elif any(hook is not None for hook in (state, on_eta, save, load, tensors)):
            raise NnobsError("nnobs.Run takes a trainer or state/on_eta/save/load functions, not both")
        self.trainer = trainer
        if not is_finite(kept_mb) or kept_mb < 0:
            raise NnobsError(f"nnobs.Run: kept_mb must be a number of MiB, 0 or more, not {kept_mb!r}")
        try:
            schedule = None if eta_schedule is None else check_eta_schedule([list(step) for step in eta_schedule])
        except (CommandError, TypeError) as err:
            raise NnobsError(f"nnobs.Run: {err}") from err
        self._settings = Settings(
            target, report_every, pace, eta, min_free_mb, wait_at_target or builtin, kept_mb, schedule
        )
        settings = (("target", target), ("report_every", report_every), ("pace", pace), ("min_free", min_free_mb))
        for setting, value in settings + (("eta", eta),) * (eta is not None):
            _check_setting(setting, value)
        self._builtin = builtin  # the built-in worker's: its run is described by config.json
        self._lock_fd: int | None = None
        self._session: Session | None = None
        self._old_handlers: dict = {}

    # -- what the loop uses ---------------------------------------------------------------

    @property
    def eta(self) -> float:
        """The learning rate now: the one the run started with, or the latest the page or CLI set."""
        return self.trainer.eta

    @property
    def batch(self) -> int:
        """Batches trained so far (the one being trained counts)."""
        return self.session.batch

    @property
    def target(self) -> int:
        return self.session.target

    def batches(self) -> Iterator[int]:
        """Batch numbers to train, from the first after a resumed checkpoint; ends at the target (or, with
        wait_at_target, idles there answering the page until it is raised), and on shutdown (command, SIGTERM,
        Ctrl-C)."""
        return self.session.batches()

    def epochs(self, loader: Iterable, epochs: int, seed: int = 0) -> Iterator[tuple[int, int, Any]]:
        """(epoch, step, batch) for an epoch loop, resumed where its run stopped: the epoch and the step within it
        follow from the run's batch count (len(loader) steps an epoch), the epoch's shuffle is drawn from seed and
        the epoch (a PyTorch RandomSampler's generator, or a sampler's set_epoch), and the steps a resumed epoch
        had done are skipped. Ends after the last epoch, at the target, on shutdown; a rewind goes back to the
        epoch and step of its batch. Each item is one batch of the run: log() it as in batches()."""
        per_epoch = len(loader)  # type: ignore[arg-type]
        if per_epoch < 1:
            raise NnobsError("run.epochs: the loader has no batches")
        last = epochs * per_epoch
        batches = self.session.batches(until=last)
        numbered = next(batches, None)  # the batch to train next: its number says where the loop is
        while numbered is not None:
            epoch, step = divmod(numbered - 1, per_epoch)
            if epoch >= epochs:
                return
            shuffle_for(loader, seed, epoch)
            for item in itertools.islice(iter(loader), step, per_epoch):
                yield epoch, step, item
                expected, numbered = numbered + 1, next(batches, None)
                if numbered != expected:  # ended, or rewound: start again where the batch count now is
                    break
                step += 1
            else:  # the epoch is done; the next batch, already numbered, begins the next one
                if step < per_epoch:
                    raise NnobsError(
                        f"run.epochs: the loader gave {step} batches in epoch {epoch}, fewer than its len() of {per_epoch}"
                    )
                continue
            if numbered is None:
                return

    def log(self, loss: float, **metrics: float) -> None:
        """The batch's loss, and any other named metrics (accuracy=0.93); each shows on the page as a chart."""
        try:
            loss = float(loss)  # also a one-element tensor or array
        except (TypeError, ValueError) as err:
            raise MetricError(f"run.log: the loss must be a number, not {loss!r}") from err
        session = self._session  # not the session property: a call less, every batch
        if session is None:
            raise NnobsError("use the run inside `with nnobs.Run(...) as run:`")
        session.log(loss, metrics)

    def alert(self, title: str, text: str = "", level: str = "INFO") -> None:
        """Tell whoever the runs root's alert rules reach (`nnobs alert`): an alert event in the run file, which the
        alert watcher sends, and a line in worker.log. Rank 0's alone under DDP."""
        said = f"{getattr(level, 'value', level) or 'INFO'}: {title}" + (f": {text}" if text else "")
        print(f"nnobs alert: {said}", file=sys.stderr, flush=True)
        if isinstance(self._session, Session):
            self._session.out.write({"event": [self._session.batch, EventKind.ALERT], "error": said})

    def evaluation_due(self) -> bool:
        """Whether to measure held-out metrics (a test loss) at this batch and log them with it: True at batches
        spread evenly in log batches (30 a decade), at the target, and every few seconds besides, within a share of
        the run's time (the time until the next log() counts). Call it once a batch, after the training step."""
        if isinstance(self._session, Follower):
            return self._session.evaluation_due()
        return self.session.reporter.script_evaluation_due()

    @property
    def session(self) -> Session:
        """The run protocol under this run, once started."""
        if self._session is None:
            raise NnobsError("use the run inside `with nnobs.Run(...) as run:`")
        return self._session

    # -- start and end --------------------------------------------------------------------

    def __enter__(self) -> Run:
        return self.start()

    def __exit__(self, kind, error, tb) -> None:
        self.close(error)

    def start(self) -> Run:
        """Take the run (one live worker a run), resume from its checkpoint if any, and say so in the run file.

        In a distributed job (torch.distributed initialized, several ranks) rank 0 takes the run and the other ranks
        follow its decisions: nnobs.training.ranks."""
        group = job_group()
        if group is None:
            return self._take()
        if not group.leads:
            follower = Follower(group, self.trainer)
            self._session = follower  # type: ignore[assignment]
            follower.begin()
            return self
        leader = Leader(group, SharedTrainer(self.trainer))
        try:
            self._take(leader)
        except BaseException:
            leader.started(None)
            raise
        try:
            leader.started(self._session)
        except BaseException as err:  # a rank lost as the job starts: the run ends as crashed, its threads with it
            self.close(err)
            raise
        return self

    @property
    def leads(self) -> bool:
        """Whether this process writes the run: a single process does, and rank 0 of a distributed job."""
        return not isinstance(self._session, Follower)

    def _take(self, leader: Leader | None = None) -> Run:
        run = self.run_dir
        if not self._builtin and run.config.exists():
            raise NnobsError(
                f"{run.path} is a run of the built-in worker (it has config.json): give your script's run another name"
            )
        if why := recorded_for_another_job(run):
            raise RunTaken(f"{why}: this worker exits without writing")
        self._lock_fd = claim(run)
        if self._lock_fd is None:
            raise RunBusy(
                f"run {run.name} already has a live worker (pid {local_pid(run)}); stop it first: nnobs stop {run.name}"
            )
        try:
            if not self._builtin:
                describe_script(run)
            trainer = self.trainer if leader is None else leader.trainer
            started_by = os.environ.get(STARTED_BY_ENV, "")
            self._session = Session(run, trainer, self._settings, started_by=started_by)
            self._session.ranks = leader
            self._catch_signals()
            self._session.begin()
        except BaseException:
            self._release()
            raise
        return self

    def close(self, error: BaseException | None = None) -> None:
        """End the run: a final checkpoint and the shutdown record, or the error that ended it; the run is let go."""
        try:
            if self._session is not None:
                self._session.finish(error)
        finally:
            self._release()

    def _release(self) -> None:
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)
        self._old_handlers = {}
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # drops the worker lock: the run reads stopped (or crashed) from here on
            self._lock_fd = None

    def _catch_signals(self) -> None:
        """SIGTERM and a first Ctrl-C end batches() at the next batch; a second Ctrl-C interrupts as usual. SIGUSR2,
        Slurm's preemption signal (asked for by --signal), ends it after a checkpoint as "preempted"; in a Slurm job
        SIGTERM is Slurm ending the job (nnobs stops its jobs through the control file), so the run reads crashed."""
        if threading.current_thread() is not threading.main_thread():
            return  # signals reach only the main thread: stopping from the page still works
        on_slurm = os.environ.get(LAUNCHER_ENV) == "slurm"

        def shut_down(signum, frame):
            if signum == signal.SIGUSR2:
                self.session.ending = "preempted"
            elif signum == signal.SIGTERM and on_slurm and self.session.ending == "shutdown":
                self.session.ending = "terminated"
            self.session.done = True
            if signum == signal.SIGINT:
                signal.signal(signal.SIGINT, signal.default_int_handler)

        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2):
            self._old_handlers[signum] = signal.signal(signum, shut_down)


def shuffle_for(loader: Any, seed: int, epoch: int) -> None:
    """Make the loader's shuffle of this epoch a function of seed and epoch alone, so a resumed epoch reads its
    batches in the order the interrupted one did: a sampler's set_epoch (DistributedSampler), else a seeded
    generator for a RandomSampler. A loader without a shuffle reads in its own order. A DataLoader draws its workers'
    seed from its own generator too, so the global random state (dropout) is the training's alone, as a checkpoint
    has it."""
    sampler = getattr(loader, "sampler", None)
    if callable(set_epoch := getattr(sampler, "set_epoch", None)):
        set_epoch(epoch)
    elif sampler is not None and hasattr(sampler, "generator"):  # RandomSampler, SubsetRandomSampler
        import torch  # a RandomSampler is PyTorch's: torch is there

        sampler.generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    if hasattr(loader, "generator") and hasattr(loader, "_get_iterator"):
        import torch  # a DataLoader

        loader.generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 500_009)


def _check_setting(name: str, value) -> None:
    """The same rules as for the commands that change the setting later."""
    try:
        check_command(name, value)
    except CommandError as err:
        raise NnobsError(f"nnobs.Run: {err}") from err


def describe_script(run: RunDir) -> None:
    """Say in run.json which script serves the run, and where: Restart names it when nnobs did not start it."""
    description = {"kind": "script", "argv": [sys.executable, *sys.argv], "cwd": os.getcwd(), "pid": os.getpid()}
    replace_atomically(run.description, lambda f: f.write(json.dumps(description, indent=1).encode()))
