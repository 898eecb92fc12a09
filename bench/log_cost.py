"""What one logged loss costs the training loop: nnobs's run.log beside TensorBoard, dvclive, W&B, Aim and a JSON line.

Each logger is measured in a fresh process of its own (`python -m bench.log_cost KIND CALLS FOLDER`, working in
a temporary folder), so that no logger's threads or helper processes run beside another's; the processes
alternate, ROUNDS times, and the best of each is kept. The figure is wall time in the calling thread: what the training loop waits for.
Loggers that write on a thread or process of their own (nnobs, TensorBoard, W&B) do that beside it, on the
machine's other core; their setup, and the flush and close at the end, are not timed.

nnobs: inside `with nnobs.Run(...) as run`, chunks of run.batches() with run.log(x) in the body alternate with
chunks of the same loop with an empty body; the cost of run.log is the difference, per batch. The log call
alone (repeated within one batch) and the bare loop's own cost per batch are given beside it.
dvclive: log_metric alone is the figure (each call appends a row to its .tsv, at the current step); a loop that
also calls next_step() each step, as dvclive's step history needs, pays milliseconds a step more (it rewrites
the summary and dvc.yaml), shown beside it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from itertools import islice

ROUNDS = 3  # processes per logger, alternating; the best kept
NNOBS_CALLS = 1_000_000  # per chunk of the nnobs loop, with and without run.log
NNOBS_CHUNKS = 4  # chunks of each kind per process, alternating
FLOOR_CALLS = 300_000
PEER_CALLS = 20_000  # 30-80 µs each: about a second a process
WARM_UP = 200  # calls before timing: first calls open files, start threads, compile
DVCLIVE_STEP_FRACTION = 50  # log_metric + next_step takes milliseconds: this many times fewer calls of it

# Nothing may try the network or ask a question: offline, no telemetry, no prompts.
QUIET_ENV = {
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "WANDB_DISABLE_GIT": "true",
    "WANDB_CONSOLE": "off",
    "DVC_NO_ANALYTICS": "1",
    "DVCLIVE_OPEN": "false",
    "AIM_UI_TELEMETRY_ENABLED": "0",
    "AIM_TELEMETRY_ENABLED": "0",
    "DO_NOT_TRACK": "1",
    "TF_CPP_MIN_LOG_LEVEL": "3",
}

# (kind, label, how it is called, calls a process, the package it needs)
LOGGERS = [
    ("nnobs", "nnobs run.log", "run.log(x) per batch of run.batches()", NNOBS_CALLS, "nnobs"),
    ("json", "buffered JSON line", "f.write(json.dumps({'step': i, 'loss': x}) + '\\n'), buffered file", FLOOR_CALLS, "json"),
    ("tensorboard", "TensorBoard add_scalar", "SummaryWriter(dir).add_scalar('loss', x, i)", PEER_CALLS, "tensorboard"),
    ("dvclive", "dvclive log_metric", "Live(dir).log_metric('loss', x), rows at one step", PEER_CALLS, "dvclive"),
    ("wandb", "W&B wandb.log, offline", "wandb.init(mode='offline'); wandb.log({'loss': x})", PEER_CALLS, "wandb"),
    ("aim", "Aim Run.track", "aim.Run(repo=dir).track(x, name='loss', step=i)", PEER_CALLS, "aim"),
]


# -- in the measuring process ----------------------------------------------------------------


def _timed(call, calls: int) -> float:
    """Seconds for calls of call(i), after a warm-up."""
    for i in range(WARM_UP):
        call(i)
    start = time.perf_counter()
    for i in range(calls):
        call(i)
    return time.perf_counter() - start


def measure_nnobs(calls: int, folder: str) -> dict:
    import numpy as np

    import nnobs

    vec = np.zeros(9)  # the XOR net's parameters: state reports as small as they come
    x = 0.25
    bare, logged, alone = [], [], []
    with nnobs.Run("log-cost", root=folder, state=lambda: vec, target=10**9) as run:
        batches, log = run.batches(), run.log
        for _ in islice(batches, WARM_UP):
            log(x)
        for _ in range(NNOBS_CHUNKS):
            start = time.perf_counter()
            for _ in islice(batches, calls):
                pass
            bare.append(time.perf_counter() - start)
            start = time.perf_counter()
            for _ in islice(batches, calls):
                log(x)
            logged.append(time.perf_counter() - start)
            start = time.perf_counter()
            for _ in range(calls):  # within the one batch being trained: the call and nothing else
                log(x)
            alone.append(time.perf_counter() - start)
        batches.close()  # out of the loop; the final checkpoint, on exit, is not timed
    return {"us": (min(logged) - min(bare)) / calls * 1e6, "loop_us": min(bare) / calls * 1e6,
            "alone_us": min(alone) / calls * 1e6}


def measure_json(calls: int, folder: str) -> dict:
    x = 0.25
    with open(os.path.join(folder, "log.jsonl"), "w") as f:  # default buffering: a write() is a memory copy
        write, dumps = f.write, json.dumps
        seconds = _timed(lambda i: write(dumps({"step": i, "loss": x}) + "\n"), calls)
    return {"us": seconds / calls * 1e6}


def measure_tensorboard(calls: int, folder: str) -> dict:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=folder)
    x = 0.25
    seconds = _timed(lambda i: writer.add_scalar("loss", x, i), calls)
    writer.close()
    return {"us": seconds / calls * 1e6}


def measure_dvclive(calls: int, folder: str) -> dict:
    from dvclive import Live

    x = 0.25
    with Live(dir=os.path.join(folder, "live"), save_dvc_exp=False) as live:
        alone = _timed(lambda i: live.log_metric("loss", x), calls)  # rows at one step: the metric call alone

        def step(i):
            live.log_metric("loss", x)
            live.next_step()  # writes the summary and dvc.yaml each step: milliseconds, so fewer calls

        stepped = _timed(step, max(1, calls // DVCLIVE_STEP_FRACTION))
    return {"us": alone / calls * 1e6, "step_us": stepped / max(1, calls // DVCLIVE_STEP_FRACTION) * 1e6}


def measure_wandb(calls: int, folder: str) -> dict:
    import wandb

    run = wandb.init(project="log-cost", dir=folder, mode="offline")
    x = 0.25
    seconds = _timed(lambda i: wandb.log({"loss": x}), calls)
    run.finish()
    return {"us": seconds / calls * 1e6}


def measure_aim(calls: int, folder: str) -> dict:
    from aim import Run

    run = Run(repo=folder, experiment="log-cost")
    x = 0.25
    seconds = _timed(lambda i: run.track(x, name="loss", step=i), calls)
    run.close()
    return {"us": seconds / calls * 1e6}


MEASURES = {"nnobs": measure_nnobs, "json": measure_json, "tensorboard": measure_tensorboard, "dvclive": measure_dvclive,
            "wandb": measure_wandb, "aim": measure_aim}


def main(argv: list[str]) -> None:
    kind, calls, folder = argv[0], int(argv[1]), argv[2]
    print("RESULT " + json.dumps(MEASURES[kind](calls, folder)), flush=True)


# -- in the bench ----------------------------------------------------------------------------


def installed(package: str) -> bool:
    from importlib.util import find_spec

    return find_spec(package) is not None


def run_measure(kind: str, calls: int) -> dict | str:
    """The measuring process's figures, or why there are none."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # bench's parent, for -m bench.log_cost
    env = {**os.environ, **QUIET_ENV, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    try:
        with tempfile.TemporaryDirectory() as folder:  # its working directory: dvclive writes dvc.yaml there
            out = subprocess.run([sys.executable, "-m", "bench.log_cost", kind, str(calls), folder], check=False,
                                 capture_output=True, text=True, env=env, cwd=folder, timeout=600,
                                 stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return "timed out"
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
    return f"failed: {tail[:120]}"


def costs() -> dict[str, dict | str]:
    """Per logger, the best (lowest) figures of ROUNDS alternating processes, or why it could not be measured."""
    best: dict[str, dict | str] = {}
    for kind, *_, package in LOGGERS:
        if not installed(package):
            best[kind] = "not installed (pip install -e '.[bench]')"
    for _ in range(ROUNDS):
        for kind, _, _, calls, _ in LOGGERS:
            if isinstance(best.get(kind), str):
                continue
            found = run_measure(kind, calls)
            if isinstance(found, str):
                best[kind] = found
                continue
            known = best.get(kind)
            best[kind] = found if known is None else {k: min(v, known[k]) for k, v in found.items()}
    return best


def figures(say) -> None:
    found = costs()
    ours, board = found["nnobs"], found["tensorboard"]
    if isinstance(ours, str):
        say("run.log, µs a call (amortised)", None, "< 1 µs", False, ours)
        return
    say("run.log, µs a call (amortised)", ours["us"], "< 1 µs", ours["us"] < 1.0,
        f"loop with run.log minus the bare loop over run.batches(), {NNOBS_CALLS:,} batches; the call alone "
        f"{ours['alone_us']:.2f} µs, the bare loop {ours['loop_us']:.2f} µs a batch")
    # The difference of two loops can come out at nothing on a busy machine: then the call alone, which is dearer.
    cost = ours["us"] if ours["us"] > 0.01 else ours["alone_us"]
    if isinstance(board, str):
        say("TensorBoard add_scalar / run.log", None, ">= 30x", None, f"TensorBoard {board}")
    else:
        ratio = board["us"] / cost
        say("TensorBoard add_scalar / run.log", ratio, ">= 30x", ratio >= 30,
            f"{board['us']:.1f} vs {cost:.2f} µs a call")
    for kind, label, how, calls, _ in LOGGERS[1:]:
        peer = found[kind]
        if isinstance(peer, str):
            say(f"{label}, µs a call", None, "(context)", None, f"{peer}; {how}")
            continue
        extra = f"; with next_step() each step {peer['step_us']:,.0f} µs" if "step_us" in peer else ""
        say(f"{label}, µs a call", peer["us"], "(context)", None,
            f"{peer['us'] / cost:,.0f}x run.log; {how}, {calls:,} calls{extra}")


if __name__ == "__main__":
    main(sys.argv[1:])
