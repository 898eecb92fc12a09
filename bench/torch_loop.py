"""A real PyTorch loop, unobserved and observed by nnobs: what watching a script's own training costs it.

A 784-128-10 MLP (ReLU), batches of 64, cross-entropy, plain SGD, on one thread; the data is made once in
memory. Both loops do the same work each batch, loss.item() included; the observed one runs inside
nnobs.Run(trainer=nnobs.torch.attach(model, optimizer)) over run.batches() and logs each loss with
run.log(loss.item()): its state reports, checkpoints (every 3 s) and answers to the control file are in the
timed part. Starting the run and its final checkpoint on leaving the `with` block are not. Bare and observed
steps alternate in blocks of 10 in one process, from the first step and past the first 1,500: whole loops one
after the other read anywhere from 0.79 to 1.10 of each other on a shared machine, and runs of blocks of 50 spread
twice as wide as runs of blocks of 10 (standard deviations 1.7 % and 0.8 % over 25 runs of the first steps).
"""

from __future__ import annotations

import statistics
import tempfile
import time

WARM_UP = 50  # batches before the clock starts, in both loops
DATA_BATCHES = 32  # distinct batches of synthetic data, cycled
SIZES = (784, 128, 10)
ROWS = 64
FIRST_STEPS = 1_500  # a run's first steps, where its reports and kept checkpoints are densest
FIRST_PAIRS = 31  # the median of 15 moved by half a percent from one bench run to the next
STEADY_STEPS = 6_000  # past the first steps: each side about 4 s, a clock checkpoint or two and kept ones among them
STEADY_RUNS = 5
BLOCK = 10  # steps of each side in turn, when bare and observed steps alternate in one process (about 8 ms)


def _setup():
    import torch

    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    data = [(torch.randn(ROWS, SIZES[0], generator=generator), torch.randint(0, SIZES[-1], (ROWS,), generator=generator))
            for _ in range(DATA_BATCHES)]
    return torch, data


def _model(torch):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(SIZES[0], SIZES[1]), torch.nn.ReLU(), torch.nn.Linear(SIZES[1], SIZES[2]))
    return model, torch.optim.SGD(model.parameters(), lr=0.01)


def _step(model, opt, loss_fn, x, y) -> float:
    """One training step, the same in every loop here, bare or observed: its loss, loss.item() included."""
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()
    return loss.item()


def unobserved_rate(batches: int, warm_up: int = WARM_UP) -> float:
    """Batches a second of the bare loop, loss.item() each batch, after warm_up batches."""
    torch, data = _setup()
    model, opt = _model(torch)
    loss_fn = torch.nn.functional.cross_entropy
    start = 0.0
    start = time.perf_counter()
    for i in range(warm_up + batches):
        if i == warm_up:
            start = time.perf_counter()
        _step(model, opt, loss_fn, *data[i % DATA_BATCHES])
    return batches / (time.perf_counter() - start)


def observed_rate(batches: int, warm_up: int = WARM_UP) -> float:
    """Batches a second of the same loop inside nnobs.Run, each loss logged, after warm_up batches (0: from the
    first, the start's burst of reports included)."""
    import nnobs
    import nnobs.torch

    torch, data = _setup()
    model, opt = _model(torch)
    loss_fn = torch.nn.functional.cross_entropy
    end = warm_up + batches
    with tempfile.TemporaryDirectory() as root, nnobs.Run("torch-loop", root=root, trainer=nnobs.torch.attach(model, opt),
                                                          target=10**9) as run:
        start = time.perf_counter()
        for batch in run.batches():
            if batch == warm_up + 1:
                start = time.perf_counter()
            run.log(_step(model, opt, loss_fn, *data[batch % DATA_BATCHES]))
            if batch == end:
                break
        elapsed = time.perf_counter() - start  # before the final checkpoint the `with` block writes
    return batches / elapsed


def interleaved_steps(steps: int = FIRST_STEPS, block: int = BLOCK, warm_up: int = 0) -> tuple[float, float]:
    """Seconds of a bare loop's steps and of an observed loop's (from the Run's first: its start's burst of reports
    and checkpoints included, unless warm_up steps of each side went before, untimed), trained in alternating
    blocks of block steps in one process, so that both see the same moments of the machine; which side goes first
    alternates. The Run's clock keeps running through the bare blocks, so its looks at the control file and its
    clock's reports and checkpoints fall in its own blocks more densely than when it runs alone: this errs against
    the observed side."""
    import nnobs
    import nnobs.torch

    torch, data = _setup()
    bare_model, bare_opt = _model(torch)
    model, opt = _model(torch)
    loss_fn = torch.nn.functional.cross_entropy
    seconds = [0.0, 0.0]
    with tempfile.TemporaryDirectory() as root, nnobs.Run("torch-loop", root=root, trainer=nnobs.torch.attach(model, opt),
                                                          target=10**9) as run:
        batches = run.batches()

        def bare(first: int, n: int) -> None:
            for i in range(first, first + n):
                _step(bare_model, bare_opt, loss_fn, *data[i % DATA_BATCHES])

        def observed(first: int, n: int) -> None:
            for _ in range(n):
                batch = next(batches)
                run.log(_step(model, opt, loss_fn, *data[batch % DATA_BATCHES]))

        bare(1, warm_up)
        observed(1, warm_up)
        done = warm_up
        steps += warm_up
        while done < steps:
            n = min(block, steps - done)
            order = ((0, bare), (1, observed)) if (done // block) % 2 == 0 else ((1, observed), (0, bare))
            for side, train in order:
                started = time.perf_counter()
                train(done + 1, n)
                seconds[side] += time.perf_counter() - started
            done += n
        batches.close()
    return seconds[0], seconds[1]


def figures(say) -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        say("PyTorch loop observed / unobserved", None, ">= 0.99", None, "PyTorch not installed: pip install -e '.[bench]'")
        return
    import nnobs.torch  # noqa: F401  (imported once, outside the timing)

    steady = [interleaved_steps(STEADY_STEPS, warm_up=FIRST_STEPS) for _ in range(STEADY_RUNS)]
    ratios = sorted(bare_s / observed_s for bare_s, observed_s in steady)
    ratio = statistics.median(ratios)
    rate = statistics.median(STEADY_STEPS / observed_s for _, observed_s in steady)
    say("PyTorch loop observed / unobserved (784-128-10)", ratio, ">= 0.99", ratio >= 0.99,
        f"batch {ROWS}, SGD, 1 thread, run.log(loss.item()) each batch, past {FIRST_STEPS:,} steps of each; "
        f"{STEADY_STEPS:,} bare and observed steps in alternating blocks of {BLOCK} in one process (observed "
        f"{rate:,.0f} steps/s); median of {STEADY_RUNS} runs (each {', '.join(f'{r:.3f}' for r in ratios)})")
    ratios = []
    for _ in range(FIRST_PAIRS):  # from the first batch: the start's burst of reports and checkpoints included
        bare_s, observed_s = interleaved_steps()
        ratios.append(bare_s / observed_s)
    ratio = statistics.median(ratios)
    say(f"PyTorch loop's first {FIRST_STEPS:,} steps observed / unobserved", ratio, ">= 0.99", ratio >= 0.99,
        f"the 101,770-parameter MLP above timed from its first batch, bare and observed steps in alternating blocks "
        f"of {BLOCK} in one process; median of {FIRST_PAIRS} runs (each {', '.join(f'{r:.3f}' for r in sorted(ratios))})")
    sequential = []
    for _ in range(FIRST_PAIRS):  # the same, each loop whole in turn: what the machine's moods do to a figure
        plain = unobserved_rate(FIRST_STEPS, warm_up=0)
        sequential.append(observed_rate(FIRST_STEPS, warm_up=0) / plain)
    say(f"PyTorch loop's first {FIRST_STEPS:,} steps, whole loops in turn", statistics.median(sequential), "(noise)",
        None, f"median of {FIRST_PAIRS} pairs of whole loops, one after the other "
        f"(each {', '.join(f'{r:.3f}' for r in sorted(sequential))}): the machine's speed moves more than watching costs")
