"""The built-in worker: the numpy net a run's config.json describes, trained over the same protocol as any script."""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from nnobs.protocol.records import RecordWriter
from nnobs.protocol.rundir import RunDir
from nnobs.protocol.slot import tell_log
from nnobs.training.builtin.nn import Fact, Network
from nnobs.training.builtin.sampler import Sampler
from nnobs.training.builtin.tasks import RunConfig, batch_source, build_network, dataset, load_config, tensors
from nnobs.training.sdk import RUN_DIR_ENV, STARTED_BY_ENV, NetTrainer, Run, RunBusy, RunTaken


def builtin_trainer(config: RunConfig, next_batch: Callable[[], Fact] | None = None) -> NetTrainer:
    """The configured net and task as a trainer; next_batch replaces the task's batches (tests)."""
    config.check()
    data = dataset(config)
    task_batches = batch_source(config, data)

    def reinit(seed: int | None) -> tuple[Network, int]:
        fresh = replace(config, seed=config.seed if seed is None else seed)
        return build_network(fresh), fresh.seed

    sampler = task_batches if isinstance(task_batches, Sampler) else None
    # A sampled task's loss now is that of all its training points; xor's, that of its one batch (as ever).
    return NetTrainer(
        build_network(config),
        next_batch or task_batches,
        tensors(config),
        reinit,
        sampler=sampler,
        loss_facts=None if sampler is None else (data.train_x, data.train_y),
        test_facts=(data.test_x, data.test_y) if len(data.test_x) else None,
    )


def train(run: Run, trainer: NetTrainer) -> None:
    """The built-in loop: every batch the task's, learnt by the net, its loss logged; the test loss beside it."""
    test_loss = None if trainer.test_facts is None else (lambda: {"test_loss": trainer.test_loss()})
    assert trainer.next_batch is not None, "the built-in trainer is made with its task's batches"
    run.session.train(trainer.net.learn_one, trainer.next_batch, extra_metrics=test_loss)


def main(argv: list[str]) -> int:
    run_dir = RunDir(Path(argv[0]))
    os.environ[RUN_DIR_ENV] = str(run_dir.path)
    os.environ[STARTED_BY_ENV] = (argv[1:] or [""])[0]
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    try:
        config = load_config(run_dir.config)
        trainer = builtin_trainer(config)
        run = Run(
            trainer=trainer,
            builtin=True,
            eta=config.eta,
            target=config.target,
            report_every=config.report_every,
            pace=config.pace,
            min_free_mb=config.min_free_mb,
            eta_schedule=config.eta_schedule,
        ).start()
    except RunTaken as err:
        tell_log(f"nnobs worker {os.getpid()}: {err}")
        return 0
    except RunBusy:
        tell_log(f"nnobs worker {os.getpid()}: another worker holds {run_dir.worker_lock}; exiting")
        return 0
    except Exception as err:  # a bad config or checkpoint: say so where the page and CLI look, then stop
        tell_log(traceback.format_exc().rstrip())
        try:
            RecordWriter(run_dir.run_file, gen=None).write({"event": [0, "error"], "error": f"cannot start: {err}"})
        except OSError:  # the run file itself is what cannot be opened (a link in its place): the log says it
            pass
        return 1
    tell_log(f"nnobs worker {os.getpid()} started {stamp} for {run_dir.path}")
    code = 0
    try:
        train(run, trainer)
    except Exception as err:
        tell_log(traceback.format_exc().rstrip())
        code = 1
        run.close(err)
    else:
        run.close()
    tell_log(f"nnobs worker {os.getpid()} exits with {code} at batch {run.session.batch}")
    return code  # the kernel releases worker.lock as the process ends


if __name__ == "__main__":
    np.seterr(all="ignore")  # a diverging run makes inf and NaN on purpose; the run file says so
    sys.exit(main(sys.argv[1:]))
