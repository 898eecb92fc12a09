"""nnobs.Run under real training loops: the example scripts (PyTorch and numpy) and small scripts written here, each
run as its own process and steered through its run directory by the CLI and the control file, as a user would."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from itertools import dropwhile
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    FOREVER,
    REPO,
    acks_of,
    answered,
    batch_passes,
    events,
    process_gone,
    records_with,
    say_at_the_end,
    wait_for,
    wait_started,
)

from nnobs.protocol.checkpoint import load_checkpoint
from nnobs.cli import main as cli_main
from nnobs.protocol.control import send_command
from nnobs.protocol.errors import NnobsError
from nnobs.protocol.records import read_all
from nnobs.protocol.rundir import RunDir
from nnobs.reading.watcher import read_history
from nnobs.launching.lifecycle import run_status
from nnobs.training.sdk import Run

TORCH_MLP = REPO / "examples/torch_mlp.py"
NUMPY_LOOP = REPO / "examples/numpy_loop.py"
MLP_TENSORS = [["0.weight", [32, 2]], ["0.bias", [32]], ["2.weight", [32, 32]], ["2.bias", [32]],
               ["4.weight", [2, 32]], ["4.bias", [2]]]  # the example's default: 2 -> 32 -> 32 -> 2
PACE = 200  # batches a second for runs that train on and on: they leave the cores to the CLI and other scripts
SCRIPT_TIMEOUT_S = 60.0  # a script's exit after it was told to end; importing torch alone takes seconds here
STARTS_WITHIN_S = 120.0  # a PyTorch script's first batches: Python and torch imported cold, at times two at once

# A PyTorch loop that goes wrong at a batch of its choosing: argv is run name, runs root, fault ("raise" or
# "nan") and the batch. The batch's input gets a NaN, as a corrupt sample would bring, so the loss, the gradients
# and then the parameters are NaN for real, not a number made up after the fact.
FAULTY_LOOP = textwrap.dedent(
    """
    import sys
    import torch
    import nnobs, nnobs.torch

    name, root, fault, at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(256, 2)
    y = (x[:, :1] * x[:, 1:] > 0).float()
    with nnobs.Run(name, root=root, trainer=nnobs.torch.attach(model, optimizer)) as run:
        for batch in run.batches():
            inputs = x.clone()
            if batch == at and fault == "raise":
                raise RuntimeError(f"the data ran out at batch {batch}")
            if batch == at and fault == "nan":
                inputs[0, 0] = float("nan")
            loss = torch.nn.functional.mse_loss(model(inputs), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            run.log(loss.item())
    print("after the loop", flush=True)
    """
)

# A loop of the script's own state (state, save and load functions, no trainer), its parameters blown up to NaN at
# a batch of its choosing, as an overflowing step would: argv is run name, runs root and the batch.
BLOWN_UP_LOOP = textwrap.dedent(
    """
    import sys
    import numpy as np
    import nnobs

    name, root, at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    params = np.ones(4)

    def save(path):
        with open(path, "wb") as f:
            np.save(f, params)

    def load(path):
        with open(path, "rb") as f:
            params[:] = np.load(f)

    with nnobs.Run(name, root=root, state=lambda: params, save=save, load=load) as run:
        for batch in run.batches():
            params *= 0.999
            if batch == at:
                params[:] = np.nan
            run.log(float(np.sum(params ** 2)))
    """
)


@dataclass
class Script:
    """A started script and the files its output goes to (files, not pipes: nobody has to keep reading them)."""

    proc: subprocess.Popen
    out: Path
    err: Path

    def stdout(self) -> str:
        return self.out.read_text()

    def stderr(self) -> str:
        return self.err.read_text()

    def exit_code(self) -> int:
        """Wait for the script to exit and return its exit code."""
        try:
            return self.proc.wait(timeout=SCRIPT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"script {self.proc.pid} still runs {SCRIPT_TIMEOUT_S:.0f} s after it was told to end:\n{self.stderr()}")


class Scripts:
    """Starts scripts as a user would (python path/to/script.py ...) and kills whatever still runs at the end."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.started: list[Script] = []

    def start(self, script: Path, *args: object) -> Script:
        n = len(self.started)
        out, err = self.folder / f"script{n}.out", self.folder / f"script{n}.err"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        with open(out, "w") as stdout, open(err, "w") as stderr:  # this checkout's nnobs, wherever it is installed
            proc = subprocess.Popen([sys.executable, str(script), *map(str, args)], stdout=stdout, stderr=stderr,
                                    cwd=self.folder, env=env)
        self.started.append(Script(proc, out, err))
        return self.started[-1]

    def kill_all(self) -> None:
        for script in self.started:
            if script.proc.poll() is None:
                script.proc.kill()
            script.proc.wait(timeout=SCRIPT_TIMEOUT_S)
            assert process_gone(script.proc.pid)


@pytest.fixture
def scripts(tmp_path: Path):
    started = Scripts(tmp_path)
    yield started
    started.kill_all()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The runs root of one test."""
    return tmp_path / "runs"


def cli(root: Path, *args: object) -> subprocess.CompletedProcess:
    """What `nnobs --runs ROOT args...` prints and returns, run by its main() here: a process of its own would
    spend a second importing what this one has."""
    argv = ["--runs", str(root), *map(str, args)]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(argv)
    return subprocess.CompletedProcess(["nnobs", *argv], code, out.getvalue(), err.getvalue())


def cli_status(run: RunDir) -> dict:
    result = cli(run.path.parent, "status", run.name, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def state_of(run: RunDir) -> str:
    return run_status(run, read_history(run)).state


def logged(run: RunDir, metric: str) -> list[tuple[int, int, float]]:
    """(generation, batch, latest value) of metric in each loss report that carries it, in file order."""
    return [(r["gen"], r["metrics"][0], r["metrics"][1][metric][0])
            for r in records_with(run, "metrics") if metric in r["metrics"][1]]


def loss_reports_from(run: RunDir, kind: str) -> list[dict]:
    """The loss reports from the first event of kind on, in file order (times alone cannot tell a millisecond's records apart)."""
    reports = records_with(run, "loss")
    return list(dropwhile(lambda r: r.get("event", [0, ""])[1] != kind, reports))


def assert_ended_cleanly(run: RunDir, script: Script) -> int:
    """The script exited 0 after its loop, the shutdown record last and a checkpoint at its batch; that batch."""
    assert script.exit_code() == 0, script.stderr()
    last = read_all(run.run_file)[-1]
    assert last["event"][1] == "shutdown", last
    ckpt = load_checkpoint(run.checkpoint)
    # A batch boundary: the final checkpoint, the shutdown record and its loss all stand at the last batch trained.
    assert ckpt.batch == last["event"][0] == last["loss"][0]
    assert f"stopped at batch {ckpt.batch:,}" in script.stdout()  # the code after the loop ran, and saw that batch
    assert state_of(run) == "stopped"
    return ckpt.batch


# -- one PyTorch run, watched by several tests that leave it training -------------------------------------------


@dataclass
class LiveRun:
    run: RunDir
    script: Script


@pytest.fixture(scope="class")
def live_mlp(tmp_path_factory):
    """The PyTorch example training towards a target it never reaches; killed after the tests of its class."""
    folder = tmp_path_factory.mktemp("live-mlp")
    started = Scripts(folder)
    script = started.start(TORCH_MLP, "mlp", "--runs", folder / "runs", "--target", FOREVER, "--pace", PACE, "--wait")
    run = RunDir.named("mlp", folder / "runs")
    try:
        batch_passes(run, 0, what="the PyTorch example to train", timeout=STARTS_WITHIN_S)
        yield LiveRun(run, script)
    finally:
        started.kill_all()


class TestALiveRun:
    """Tests that watch and steer one PyTorch run as it trains, none of them stopping it."""

    def test_the_cli_sees_the_loss_and_the_run_file_holds_the_other_metrics(self, live_mlp):
        run = live_mlp.run
        batch_passes(run, 200, what="training past the second test-accuracy batch")

        result = subprocess.run([sys.executable, "-m", "nnobs.cli", "--runs", str(run.path.parent), "status", run.name, "--json"],
                                capture_output=True, text=True, timeout=60, check=False)  # the command itself, as a user runs it

        assert result.returncode == 0, result.stderr
        status = json.loads(result.stdout)
        assert status["state"] == "training" and status["batch"] > 200
        losses = [r["loss"][1] for r in records_with(run, "loss")]
        assert min(losses) <= status["loss"] <= max(losses)  # the mean of the newest batches the script logged
        assert 0 < status["loss"] < 10
        for metric in ("accuracy", "test_accuracy"):
            values = [value for _, _, value in logged(run, metric)]
            assert values and all(0 <= value <= 1 for value in values), (metric, values[:5])
        # Held-out metrics are measured where run.evaluation_due() says: from the first batches, 30 a decade.
        tested = sorted({batch for _, batch, _ in logged(run, "test_accuracy")})
        assert tested[0] <= 10 and len([b for b in tested if 100 <= b <= 200]) >= 5, tested
        assert {value for _, _, value in logged(run, "lr")} >= {0.01}

    def test_eta_set_by_the_cli_becomes_the_optimizers_learning_rate(self, live_mlp):
        run = live_mlp.run

        result = cli(run.path.parent, "set", run.name, "--eta", "0.004")

        assert result.returncode == 0 and "acknowledged" in result.stdout, result.stdout + result.stderr
        ack_batch = next(r["ack"][0] for r in records_with(run, "ack") if r["ack"][1]["cmd"] == "eta")
        # optimizer.param_groups[0]["lr"], logged by the script at each batch after the one where eta took effect
        later = wait_for(lambda: [value for _, batch, value in logged(run, "lr") if batch > ack_batch][:3],
                         what="the script to log the learning rate after the new eta")
        assert later == [0.004] * len(later)
        assert cli_status(run)["eta"] == 0.004

    def test_tell_state_reports_the_state_and_the_started_line_names_the_models_tensors(self, live_mlp):
        run = live_mlp.run
        started = events(run, "started")[0]
        assert started["params"][1]["tensors"] == MLP_TENSORS
        n_params = sum(math.prod(shape) for _, shape in MLP_TENSORS)

        command = send_command(run.control_file, "tell_state", by="test")

        answer = answered(run, command)
        report = acks_of(run, command)[0]
        assert answer.ok and report["sv"][0] == answer.batch > started["event"][0]
        assert len(report["sv"][1]) == n_params
        assert report["sv"][1] != started["sv"][1]  # the model has trained since it started
        assert report["eta"] == [answer.batch, read_history(run).eta]

    def test_a_second_run_on_the_same_name_while_the_first_lives_is_refused_naming_the_live_worker(self, live_mlp):
        run = live_mlp.run
        second = Run(run.name, root=run.path.parent, state=lambda: np.zeros(3))

        with pytest.raises(NnobsError) as refused:
            second.start()

        assert f"pid {live_mlp.script.proc.pid}" in str(refused.value) and f"nnobs stop {run.name}" in str(refused.value)
        seen = read_history(run).batch
        batch_passes(run, seen, what="the first run to train on after the refusal")
        assert events(run, "started")[-1]["pid"] == live_mlp.script.proc.pid


    def test_training_idles_at_the_target_and_goes_on_when_it_is_raised(self, live_mlp):
        run = live_mlp.run
        target = read_history(run).batch + 5 * PACE  # seconds of training away: the CLI's command lands before it

        assert cli(run.path.parent, "set", run.name, "--target", target).returncode == 0

        wait_for(lambda: (s := run_status(run, read_history(run))).state == "idle" and s.batch == target,
                 what=f"the run to idle at batch {target}")
        # Idle: the heartbeat goes on, a second and more after reaching the target, and the batch stays where it was.
        later = wait_for(lambda: (records := loss_reports_from(run, "target_reached"))
                         and records[-1]["t"] >= records[0]["t"] + 1.0 and records,
                         what="a heartbeat a second after reaching the target")
        assert {r["loss"][0] for r in later} == {target}
        status = cli_status(run)
        assert (status["state"], status["batch"], status["target"]) == ("idle", target, target)

        assert cli(run.path.parent, "set", run.name, "--target", FOREVER).returncode == 0

        batch_passes(run, target, what="training to go on past the old target")
        assert state_of(run) == "training"
        assert [e["event"][0] for e in events(run, "target_reached")] == [target]

# -- runs of their own ------------------------------------------------------------------------------------------


def test_nnobs_stop_ends_the_loop_at_a_batch_with_a_final_checkpoint_and_the_script_exits_0(root, scripts):
    script = scripts.start(TORCH_MLP, "mlp", "--runs", root, "--target", FOREVER, "--pace", PACE)
    run = RunDir.named("mlp", root)
    batch_passes(run, 20, timeout=STARTS_WITHIN_S)

    result = cli(root, "stop", "mlp")

    assert result.returncode == 0, result.stdout + result.stderr
    batch = assert_ended_cleanly(run, script)
    assert f"mlp: stopped at batch {batch:,}" in result.stdout
    assert cli_status(run)["state"] == "stopped"


def test_sigterm_and_sigint_each_end_the_loop_as_a_shutdown_does(root, scripts):
    # Two runs side by side: the two scripts import torch at the same time.
    signals = {"term": signal.SIGTERM, "int": signal.SIGINT}
    started = {name: scripts.start(TORCH_MLP, name, "--runs", root, "--target", FOREVER, "--pace", PACE) for name in signals}
    for name in signals:
        batch_passes(RunDir.named(name, root), 20, timeout=STARTS_WITHIN_S)

    for name, signum in signals.items():
        started[name].proc.send_signal(signum)

    for name, script in started.items():
        assert_ended_cleanly(RunDir.named(name, root), script)
        assert "Traceback" not in script.stderr()  # Ctrl-C once ends the loop: it does not interrupt the script


def test_kill_9_reads_crashed_at_once_and_a_second_start_resumes_with_the_learning_rate_set_before(root, scripts, request):
    first = scripts.start(TORCH_MLP, "mlp", "--runs", root, "--target", FOREVER, "--pace", PACE)
    run = RunDir.named("mlp", root)
    batch_passes(run, 20, timeout=STARTS_WITHIN_S)
    answered(run, send_command(run.control_file, "eta", 0.002, by="test"))
    wait_for(lambda: (c := load_checkpoint(run.checkpoint)) is not None and c.eta == 0.002,
             what="a checkpoint that holds the new eta")

    first.proc.kill()
    killed = time.monotonic()
    wait_for(lambda: state_of(run) == "crashed", timeout=10, what="the killed run to read crashed")
    seen_after = time.monotonic() - killed

    say_at_the_end(request.config, f"test_sdk: crashed seen {seen_after * 1000:.0f} ms after kill -9 of a PyTorch script")
    assert first.exit_code() == -signal.SIGKILL
    assert cli_status(run)["label"] == "crashed"
    ckpt = load_checkpoint(run.checkpoint)

    scripts.start(TORCH_MLP, "mlp", "--runs", root, "--target", FOREVER, "--pace", PACE, "--lr", 0.01)  # the code's lr, not the run's

    started = wait_started(run, 2, timeout=STARTS_WITHIN_S)
    assert (started["resumed_from"], started["event"][0], started["gen"]) == (ckpt.batch, ckpt.batch, ckpt.gen + 1)
    resumed = wait_for(lambda: [value for gen, _, value in logged(run, "lr") if gen == started["gen"]][:3],
                       what="the resumed script to log its learning rate")
    assert resumed == [0.002] * len(resumed)  # optimizer.param_groups[0]["lr"] in the new process
    batch_passes(run, ckpt.batch, what="the resumed run to train past its checkpoint")
    status = cli_status(run)
    assert (status["state"], status["generation"], status["eta"]) == ("training", ckpt.gen + 1, 0.002)


def test_an_exception_in_the_loop_is_recorded_and_the_run_reads_crashed_with_it(root, scripts, tmp_path):
    faulty = tmp_path / "faulty_loop.py"
    faulty.write_text(FAULTY_LOOP)
    script = scripts.start(faulty, "faulty", root, "raise", 40)
    run = RunDir.named("faulty", root)

    assert script.exit_code() == 1
    assert "RuntimeError: the data ran out at batch 40" in script.stderr()  # the user's own traceback, unchanged
    assert "after the loop" not in script.stdout()
    error = events(run, "error")[-1]
    assert error["event"][0] == 40 and error["error"] == "RuntimeError: the data ran out at batch 40"
    status = cli_status(run)
    assert (status["state"], status["error"]) == ("crashed", "RuntimeError: the data ran out at batch 40")


def test_a_nan_loss_reads_diverged_and_every_line_of_the_run_file_is_strict_json(root, scripts, tmp_path):
    faulty = tmp_path / "faulty_loop.py"
    faulty.write_text(FAULTY_LOOP)
    script = scripts.start(faulty, "faulty", root, "nan", 30)
    run = RunDir.named("faulty", root)

    wait_for(lambda: events(run, "diverged"), what="the NaN loss to be noticed")

    status = cli_status(run)
    assert status["label"] == "diverged" and status["diverged"]
    diverged = events(run, "diverged")[0]
    assert diverged["event"][0] >= 30 and diverged["loss"] == [diverged["event"][0], None]  # NaN written as null

    def no_nan(text: str):
        raise AssertionError(f"{text} in the run file")

    lines = run.run_file.read_text().splitlines()
    assert lines and all(isinstance(json.loads(line, parse_constant=no_nan), dict) for line in lines)
    result = cli(root, "stop", "faulty")  # a paused run still answers, and ends as any other
    assert result.returncode == 0 and script.exit_code() == 0 and "after the loop" in script.stdout()


def test_a_run_that_diverges_before_its_first_timed_checkpoint_goes_back_to_the_parameters_it_started_with(
        root, scripts, tmp_path):
    blown_up = tmp_path / "blown_up_loop.py"
    blown_up.write_text(BLOWN_UP_LOOP)
    scripts.start(blown_up, "blown-up", root, 30)
    run = RunDir.named("blown-up", root)
    diverged = wait_for(lambda: events(run, "diverged"), what="the NaN loss to be noticed")[0]
    assert diverged["event"][0] == 30  # well within the 3 s before a timed checkpoint

    command = send_command(run.control_file, "tell_state", by="test")

    answered(run, command)
    report = acks_of(run, command)[0]
    assert None not in report["sv"][1], f"parameters left NaN (written as null): {report['sv'][1]}; {diverged['error']}"


def test_a_checkpoint_of_another_model_is_refused_naming_the_tensor_that_differs():
    import torch  # here, not above: the other tests run PyTorch in their scripts only

    import nnobs.torch

    def mlp(hidden: int) -> nnobs.torch.TorchTrainer:
        model = torch.nn.Sequential(torch.nn.Linear(2, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 2))
        return nnobs.torch.attach(model, torch.optim.Adam(model.parameters()))

    saved = mlp(32).save()  # what a run of the example with --hidden 32 checkpoints

    with pytest.raises(ValueError) as refused:
        mlp(64).load(saved)  # the same run started again with --hidden 64

    assert "0.weight" in str(refused.value), str(refused.value)


# -- a numpy net of nnobs.training.builtin.nn --------------------------------------------------------------------------------------


def test_eta_from_the_control_file_sets_the_numpy_nets_eta(root, scripts):
    scripts.start(NUMPY_LOOP, "sine", "--runs", root, "--target", FOREVER, "--pace", PACE)
    run = RunDir.named("sine", root)
    batch_passes(run, 100)

    answer = answered(run, send_command(run.control_file, "eta", 0.02, by="test"))

    later = wait_for(lambda: [value for _, batch, value in logged(run, "lr") if batch > answer.batch][:3],
                     what="the script to log net.eta after the new eta")
    assert later == [0.02] * len(later)
    assert {value for _, batch, value in logged(run, "lr") if batch < answer.batch} == {0.05}


def test_a_numpy_net_started_again_resumes_its_state_vector(root, scripts):
    first = scripts.start(NUMPY_LOOP, "sine", "--runs", root, "--target", FOREVER, "--pace", PACE)
    run = RunDir.named("sine", root)
    batch_passes(run, 100)
    assert cli(root, "stop", "sine").returncode == 0
    stopped_at = assert_ended_cleanly(run, first)
    ckpt = load_checkpoint(run.checkpoint)

    scripts.start(NUMPY_LOOP, "sine", "--runs", root, "--target", FOREVER, "--pace", PACE)

    fresh, resumed = events(run, "started")[0], wait_started(run, 2)
    assert resumed["resumed_from"] == stopped_at
    # The script drew the same first weights as before; the state it reports is the checkpoint's, not those.
    assert resumed["sv"][1] == ckpt.sv.tolist() != fresh["sv"][1]
    batch_passes(run, stopped_at, what="the resumed net to train on")
    assert state_of(run) == "training"
