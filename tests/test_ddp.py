"""A real torchrun job of two ranks (gloo, CPU) under `nnobs run`, steered as one run: every rank opens it, every
command takes effect on every rank at the same batch, and their parameters stay equal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, batch_passes, events, process_gone, records_with, wait_for
from slurm_support import slurm, slurm_runs_root  # noqa: F401
from nnobs.launching.lifecycle import run_status
from nnobs.protocol.rundir import RunDir
from nnobs.reading.watcher import read_history

pytest.importorskip("torch", reason="the DDP tests train a real PyTorch model")

TORCHRUN = Path(sys.executable).with_name("torchrun")
DDP_SCRIPT = REPO / "examples/torch_ddp.py"
RANKS = 2


def nnobs(runs_root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nnobs.cli", "--runs", str(runs_root), *args], capture_output=True,
                          text=True, timeout=120)


def traces(trace: Path) -> list[dict[int, tuple[float, float, float]]]:
    """Per rank, per batch its learning rate in use, its parameter checksum and its loss (a batch trained again after
    a restart: its newest line)."""
    ranks = []
    for rank in range(RANKS):
        steps = {}
        path = Path(f"{trace}.rank{rank}")
        for line in path.read_text().splitlines() if path.exists() else []:
            parts = line.split()
            if len(parts) == 4:
                steps[int(parts[0])] = (float(parts[1]), float(parts[2]), float(parts[3]))
        ranks.append(steps)
    return ranks


def ranks_of(trace: Path) -> list[int]:
    """The pids of the job's ranks, by rank: the processes given trace whose environment names their RANK (torchrun
    sets it for each rank; its own agents have none), whether one torchrun starts them or one a Slurm task."""
    ranks = {}
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or str(trace).encode() not in (entry / "cmdline").read_bytes():
                continue
            environ = dict(
                v.split(b"=", 1) for v in (entry / "environ").read_bytes().split(b"\0") if b"=" in v
            )
        except OSError:
            continue
        if b"RANK" in environ:
            ranks[int(environ[b"RANK"])] = int(entry.name)
    return [ranks[rank] for rank in sorted(ranks)]


# A Lightning user's DDP fit under torchrun, as Lightning's docs write it: the Trainer on as many CPU devices as
# torchrun starts ranks. Each rank writes its step's learning rate, parameter checksum and loss to a trace.
LIGHTNING_SCRIPT = """
import os, sys
import lightning.pytorch as pl
import torch
from torch import nn
import nnobs.lightning

pace, trace_path = float(sys.argv[1]), sys.argv[2]
torch.set_num_threads(1)


class Net(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 2))
        self.trace = open(f"{trace_path}.rank{os.environ['RANK']}", "a")

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        checksum = sum(p.detach().double().sum().item() for p in self.parameters())
        self.trace.write(f"{self.global_step + 1} {lr!r} {checksum!r} {loss.item()!r}\\n")
        self.trace.flush()
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


pl.seed_everything(0, verbose=False)
data = torch.Generator().manual_seed(0)
x = torch.randn(4096, 2, generator=data)
y = (x[:, 0] * x[:, 1] > 0).long()
trainer = pl.Trainer(max_steps=100_000, accelerator="cpu", devices=int(os.environ["WORLD_SIZE"]), strategy="ddp",
                     logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, callbacks=[nnobs.lightning.Callback(pace=pace)])
trainer.fit(Net(), torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True))
print(f"rank {os.environ['RANK']}: fit returned; exit 0", flush=True)
"""


# A Transformers Trainer under torchrun (accelerate makes it DDP), the callback in its place and its checkpoint handed
# to train(); each rank traces its step's learning rate, parameter checksum and loss (the model's own, per step).
TRANSFORMERS_SCRIPT = """
import os, sys
import torch, transformers
import nnobs.transformers

pace, trace_path = float(sys.argv[1]), sys.argv[2]
torch.set_num_threads(1)
transformers.set_seed(0)
config = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=1, n_head=2)
model = transformers.GPT2LMHeadModel(config)
starts = torch.randint(0, 64, (512, 1), generator=torch.Generator().manual_seed(0))
rows = (starts + torch.arange(32)) % 64
trace = open(f"{trace_path}.rank{os.environ['RANK']}", "a")
step = {}
model.register_forward_hook(lambda module, inputs, outputs: step.update(loss=outputs.loss.item()) if module.training else None)


class Trace(transformers.TrainerCallback):
    def on_step_begin(self, args, state, control, model=None, lr_scheduler=None, **kwargs):
        step.update(lr=lr_scheduler.get_last_lr()[0], checksum=sum(p.detach().double().sum().item() for p in model.parameters()))

    def on_step_end(self, args, state, control, **kwargs):
        trace.write(f"{state.global_step} {step['lr']!r} {step['checksum']!r} {step['loss']!r}\\n")
        trace.flush()


watch = nnobs.transformers.Callback(pace=pace)
args = transformers.TrainingArguments(output_dir="out", max_steps=100_000, per_device_train_batch_size=8, learning_rate=0.01,
                                      lr_scheduler_type="constant", logging_steps=50, save_strategy="no", report_to=[],
                                      use_cpu=True, disable_tqdm=True)
trainer = transformers.Trainer(model=model, args=args, train_dataset=[{"input_ids": r, "labels": r} for r in rows],
                               callbacks=[Trace(), watch])
trainer.train(resume_from_checkpoint=watch.resume_from_checkpoint)
print(f"rank {os.environ['RANK']}: train returned; exit 0", flush=True)
"""


def start_job(runs_root: Path, tmp_path: Path, script: list[str]) -> tuple[RunDir, Path]:
    """`nnobs run ddp -- torchrun ... SCRIPT ARGS TRACE`: the job's start is seen when its rank 0 reports."""
    trace = tmp_path / "trace"
    started = nnobs(runs_root, "run", "ddp", "--", str(TORCHRUN), "--standalone", f"--nproc_per_node={RANKS}",
                    *script, str(trace))
    assert started.returncode == 0, started.stderr
    return RunDir.named("ddp", runs_root), trace


@pytest.fixture
def ddp_run(runs_root: Path, tmp_path: Path):
    yield start_job(runs_root, tmp_path, [str(DDP_SCRIPT), "--pace", "150", "--trace"])
    nnobs(runs_root, "stop", "ddp")


@pytest.fixture
def lightning_ddp_run(runs_root: Path, tmp_path: Path):
    pytest.importorskip("lightning", reason="the Lightning DDP test needs the test extra's Lightning")
    script = tmp_path / "train.py"
    script.write_text(LIGHTNING_SCRIPT)
    yield start_job(runs_root, tmp_path, [str(script), "150"])
    nnobs(runs_root, "stop", "ddp")


@pytest.fixture
def transformers_ddp_run(runs_root: Path, tmp_path: Path):
    pytest.importorskip("transformers", reason="the Transformers DDP test needs the test extra's Transformers")
    script = tmp_path / "train.py"
    script.write_text(TRANSFORMERS_SCRIPT)
    yield start_job(runs_root, tmp_path, [str(script), "100"])
    nnobs(runs_root, "stop", "ddp")


def test_a_torchrun_job_takes_eta_on_every_rank_at_one_batch_stops_whole_and_resumes_every_rank_alike(
    ddp_run, runs_root
):
    steered_as_one(*ddp_run, runs_root)


def test_a_lightning_ddp_fit_takes_eta_on_every_rank_at_one_batch_stops_whole_and_resumes_every_rank_alike(
    lightning_ddp_run, runs_root
):
    steered_as_one(*lightning_ddp_run, runs_root)


def test_a_transformers_ddp_trainer_takes_eta_on_every_rank_at_one_batch_stops_whole_and_resumes_every_rank_alike(
    transformers_ddp_run, runs_root
):
    steered_as_one(*transformers_ddp_run, runs_root)


def steered_as_one(run: RunDir, trace: Path, runs_root: Path) -> None:
    """eta set from the CLI is in use on every rank from the same batch and their parameters stay equal; the loss
    shown is the mean over ranks; stop ends every rank at one batch, exit 0; restart resumes every rank alike."""
    batch_passes(run, 300, what="300 batches of the job", timeout=120)
    assert len(ranks_of(trace)) == RANKS
    told = nnobs(runs_root, "set", "ddp", "--eta", "0.002")
    assert told.returncode == 0, told.stderr
    acked = int(told.stdout.split("acknowledged at batch ")[1].split()[0].replace(",", ""))
    batch_passes(run, acked + 100, what="100 batches more")
    ranks = traces(trace)
    for rank, steps in enumerate(ranks):
        first = min(b for b, (lr, _, _) in steps.items() if lr == 0.002)
        assert first == acked + 1, f"rank {rank} trains with eta 0.002 from batch {first}, not {acked + 1}"
    common = sorted(set(ranks[0]) & set(ranks[1]))
    assert len(common) > 400
    assert all(ranks[0][b][1] == ranks[1][b][1] for b in common), "the ranks' parameters stay equal, bit for bit"
    shows_the_mean_loss_over_ranks_with_every_ranks_extremes(run, ranks)
    system = wait_for(lambda: (s := run_status(run, read_history(run)).system).get("rank1.rss_mb") and s,
                      what="rank 1's machine beside rank 0's")
    assert system["rss_mb"] > 20 and system["rank1.rss_mb"] > 20 and "rank1.cpu" in system
    rank_ones = [name.startswith("rank1.") for name in system]
    assert rank_ones == sorted(rank_ones), f"rank 0's machine comes before rank 1's: {list(system)}"

    pids = ranks_of(trace)
    stopped = nnobs(runs_root, "stop", "ddp")
    assert stopped.returncode == 0, stopped.stderr
    wait_for(lambda: all(process_gone(pid) for pid in pids), what="every rank to end")
    status = run_status(run, read_history(run))
    assert status.state == "stopped" and events(run, "shutdown")
    assert "Traceback" not in run.worker_log.read_text()
    stopped_at = events(run, "shutdown")[-1]["event"][0]
    assert [max(steps) for steps in traces(trace)] == [stopped_at] * RANKS, "every rank stops at the same batch"

    starts = len(events(run, "started"))
    assert nnobs(runs_root, "restart", "ddp").returncode == 0
    # A job on Slurm is queued when restart returns, and starts a moment later
    wait_for(lambda: len(events(run, "started")) > starts, timeout=60, what="the restarted job to start")
    assert events(run, "started")[-1]["resumed_from"] == stopped_at
    batch_passes(run, stopped_at + 200, what="200 batches after the restart")
    ranks = traces(trace)
    after = [b for b in sorted(set(ranks[0]) & set(ranks[1])) if b > stopped_at]
    assert after[0] == stopped_at + 1, "both ranks resume at the batch after the one they stopped at"
    assert all(ranks[0][b][:2] == ranks[1][b][:2] for b in after), "from the same checkpoint: equal parameters and eta"
    assert ranks[1][stopped_at + 1][0] == 0.002, "the eta set before the stop holds on every rank"


def shows_the_mean_loss_over_ranks_with_every_ranks_extremes(run: RunDir, ranks: list[dict]) -> None:
    """Each loss report's window (n, min, min_at, max, max_at, mean) of batches both ranks trained: the mean is over
    ranks and batches, the extremes every rank's."""
    checked = 0
    for record in records_with(run, "window"):
        end, (n, lo, lo_at, hi, hi_at, mean) = record["window"]
        batches = range(end - n + 1, end + 1)
        if not all(b in steps for b in batches for steps in ranks):
            continue
        losses = [steps[b][2] for b in batches for steps in ranks]
        assert mean == pytest.approx(sum(losses) / len(losses), rel=1e-6), f"window at {end}"
        assert lo == pytest.approx(min(losses), rel=1e-6) and hi == pytest.approx(max(losses), rel=1e-6)
        assert any(steps[lo_at][2] == pytest.approx(lo, rel=1e-6) for steps in ranks)
        checked += 1
    assert checked >= 5, "loss reports of batches both ranks traced"


def test_a_rank_killed_makes_the_run_crashed_and_the_job_ends(ddp_run, runs_root):
    run, trace = ddp_run
    batch_passes(run, 200, what="200 batches of the job", timeout=120)
    pids = ranks_of(trace)
    killed = time.monotonic()
    os.kill(pids[1], signal.SIGKILL)
    wait_for(lambda: all(process_gone(pid) for pid in pids), timeout=30, what="every rank to end within 30 s")
    print(f"test_ddp: every rank gone {time.monotonic() - killed:.1f} s after kill -9 of rank 1")
    status = run_status(run, read_history(run))
    assert status.state == "crashed", status.state
    # rank 0 fails in the next collective (DDP's gradient all-reduce, or the run's own), and says so in the run
    assert events(run, "error"), "rank 0 records the failed collective that ended it"


def test_a_rewind_sets_every_ranks_parameters_to_rank_0s_kept_checkpoint(ddp_run, runs_root):
    run, trace = ddp_run
    batch_passes(run, 1200, what="1,200 batches of the job", timeout=120)
    done = nnobs(runs_root, "rewind", "ddp", "--to", "800", "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    landed = events(run, "rewound")[-1]["event"][0]
    assert 800 / 1.25 <= landed <= 800
    wait_for(lambda: all(rewound_lines(trace, rank, landed) for rank in range(RANKS)), timeout=60,
             what="both ranks to train on from the batch rewound to")
    wait_for(lambda: all(len(rewound_lines(trace, rank, landed)) >= 100 for rank in range(RANKS)),
             what="100 batches after the rewind")
    after = [rewound_lines(trace, rank, landed)[:100] for rank in range(RANKS)]
    assert after[0][0][0] == after[1][0][0] == landed + 1, "every rank goes on from the batch after the landing"
    assert [(b, lr, checksum) for b, lr, checksum, _ in after[0]] == [(b, lr, c) for b, lr, c, _ in after[1]], (
        "the same parameters on every rank after the rewind, bit for bit"
    )


def rewound_lines(trace: Path, rank: int, landed: int) -> list[tuple[int, float, float, float]]:
    """A rank's trace lines after it went back to batch landed: those after the first drop in its batch numbers."""
    lines = [tuple(float(v) for v in line.split()) for line in Path(f"{trace}.rank{rank}").read_text().splitlines()
             if len(line.split()) == 4]
    drop = next((i for i in range(1, len(lines)) if lines[i][0] <= lines[i - 1][0]), None)
    if drop is None:
        return []
    return [(int(b), lr, c, loss) for b, lr, c, loss in lines[drop:]]


def test_a_slurm_job_of_two_torchrun_tasks_is_steered_as_one_run_and_ends_when_a_rank_dies(slurm_runs_root, tmp_path):
    """`nnobs run --on slurm --tasks-per-node 2 -- torchrun --nproc_per_node=1 ...`: two tasks on this one node, each
    a torchrun agent joined by torchrun's rendezvous, as two nodes would be."""
    trace = tmp_path / "trace"
    started = nnobs(slurm_runs_root, "run", "ddp", "--on", "slurm", "--tasks-per-node", str(RANKS), "--",
                    str(TORCHRUN), "--nproc_per_node=1", str(DDP_SCRIPT), "--pace", "150", "--trace", str(trace))
    assert started.returncode == 0, started.stdout + started.stderr
    run = RunDir.named("ddp", slurm_runs_root)
    steered_as_one(run, trace, slurm_runs_root)

    pids = ranks_of(trace)
    assert len(pids) == RANKS
    killed = time.monotonic()
    os.kill(pids[1], signal.SIGKILL)
    wait_for(lambda: all(process_gone(pid) for pid in pids), timeout=30, what="every rank to end within 30 s")
    print(f"test_ddp: on Slurm, every rank gone {time.monotonic() - killed:.1f} s after kill -9 of rank 1")
    wait_for(lambda: run_status(run, read_history(run)).state == "crashed", timeout=30, what="the run to read crashed")
