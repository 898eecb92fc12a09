"""A hand-written epoch loop in the shape of pytorch/examples' mnist, written the documented way (run.epochs), stopped
mid-epoch and restarted under `nnobs run`: it resumes at the right epoch and step with an uninterrupted run's losses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import batch_passes, events, wait_for
from nnobs.protocol.errors import NnobsError
from nnobs.protocol.rundir import RunDir

STEPS_PER_EPOCH, EPOCHS = 8, 4  # 256 synthetic images, batches of 32

# pytorch/examples/mnist/main.py's net, optimizer and schedule, on synthetic 28x28 images; each step's epoch, step
# and loss go to a trace file for the test to compare.
SCRIPT = f"""
import sys
import torch
from torch import nn
import torch.nn.functional as F
import nnobs, nnobs.torch

trace_path, pace = sys.argv[1], float(sys.argv[2])


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, 1)
        self.conv2 = nn.Conv2d(8, 16, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(2304, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(self.dropout1(x), 1)
        x = self.dropout2(F.relu(self.fc1(x)))
        return F.log_softmax(self.fc2(x), dim=1)


torch.manual_seed(1)
torch.set_num_threads(1)
images = torch.randn(256, 1, 28, 28)
labels = (images.mean(dim=(1, 2, 3)) * 40).long().clamp(-5, 4) + 5
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=32, shuffle=True)
model = Net()
optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)

with nnobs.Run("mnist", trainer=nnobs.torch.attach(model, optimizer, scheduler), pace=pace) as run:
    trace = open(trace_path, "a")
    for epoch, step, (data, target) in run.epochs(loader, epochs={EPOCHS}):
        model.train()
        optimizer.zero_grad()
        loss = F.nll_loss(model(data), target)
        loss.backward()
        optimizer.step()
        run.log(loss.item())
        trace.write(f"{{epoch}} {{step}} {{run.batch}} {{optimizer.param_groups[0]['lr']!r}} {{loss.item()!r}}\\n")
        trace.flush()
        if step == len(loader) - 1:
            scheduler.step()
print("done", flush=True)
"""


def nnobs(runs_root: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nnobs.cli", "--runs", str(runs_root), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def traced(trace: Path) -> dict[int, tuple[int, int, float, float]]:
    """Per batch its epoch, step, learning rate and loss; a batch trained again after a restart is its newest."""
    rows = {}
    for line in trace.read_text().splitlines():
        epoch, step, batch, lr, loss = line.split()
        rows[int(batch)] = (int(epoch), int(step), float(lr), float(loss))
    return rows


def test_an_epoch_loop_stopped_mid_epoch_resumes_at_its_epoch_and_step_with_the_same_losses(tmp_path, runs_root):
    (tmp_path / "train.py").write_text(SCRIPT)
    whole, broken = tmp_path / "whole.trace", tmp_path / "broken.trace"
    for name, trace, pace in (("whole", whole, "0"), ("broken", broken, "6")):
        started = nnobs(runs_root, "run", name, "--", sys.executable, "train.py", str(trace), pace, cwd=tmp_path)
        assert started.returncode == 0, started.stderr
    broken_run, whole_run = RunDir.named("broken", runs_root), RunDir.named("whole", runs_root)
    batch_passes(broken_run, STEPS_PER_EPOCH + 2, what="the loop to be stopped to pass its first epoch", timeout=120)
    assert nnobs(runs_root, "stop", "broken", cwd=tmp_path).returncode == 0
    stopped_at = events(broken_run, "shutdown")[-1]["event"][0]
    print(f"stopped at batch {stopped_at}")
    assert "the next start applies it" in nnobs(runs_root, "set", "broken", "--pace", "0", cwd=tmp_path).stdout
    assert nnobs(runs_root, "restart", "broken", cwd=tmp_path).returncode == 0

    last = STEPS_PER_EPOCH * EPOCHS
    for run in (whole_run, broken_run):
        wait_for(lambda run=run: len(events(run, "shutdown")) == (2 if run is broken_run else 1), timeout=180,
                 what=f"{run.name} to end after its {EPOCHS} epochs")
    assert events(broken_run, "started")[-1]["resumed_from"] == stopped_at
    reference, resumed = traced(whole), traced(broken)
    assert sorted(reference) == list(range(1, last + 1)) and max(resumed) == last, "every epoch, every step, once"
    for batch in range(stopped_at + 1, last + 1):
        assert resumed[batch][:2] == reference[batch][:2] == divmod(batch - 1, STEPS_PER_EPOCH), f"batch {batch}"
        assert resumed[batch][2:] == reference[batch][2:], f"batch {batch}: lr and loss as the uninterrupted run's"
    assert resumed[last][2] == 1.0 * 0.7 ** (EPOCHS - 1), "StepLR stepped once an epoch, across the restart"


class Loader(list):
    """Batches in a fixed order, claiming `claimed` of them: what run.epochs reads through len() and iter()."""

    def __init__(self, batches: list, claimed: int):
        super().__init__(batches)
        self.claimed = claimed

    def __len__(self) -> int:
        return self.claimed


def test_epochs_count_each_batch_once_end_after_the_last_and_resume_at_the_right_step(runs_root):
    import nnobs

    seen = []
    with nnobs.Run("counted", root=runs_root, target=10**6) as run:
        for epoch, step, item in run.epochs(Loader(list("abcd"), 4), epochs=3):
            seen.append((epoch, step, item, run.batch))
            run.log(1.0)
            if run.batch == 6:
                break
    assert seen[-1] == (1, 1, "b", 6) and [s[3] for s in seen] == list(range(1, 7))
    with nnobs.Run("counted", root=runs_root, target=10**6) as run:
        rest = [(epoch, step, item, run.batch) for epoch, step, item in run.epochs(Loader(list("abcd"), 4), epochs=3)
                if run.log(1.0) is None]
    assert rest[0] == (1, 2, "c", 7), "resumed at the step after the last one trained"
    assert rest[-1] == (2, 3, "d", 12) and run.batch == 12, "every epoch once, and no batch counted past the last"


def test_a_loader_shorter_than_its_len_is_refused_in_words(runs_root):
    import nnobs

    with pytest.raises(NnobsError, match="gave 2 batches in epoch 0, fewer than its len"):
        with nnobs.Run("short", root=runs_root, target=10**6) as run:
            for _ in run.epochs(Loader(list("ab"), 4), epochs=2):
                run.log(1.0)
