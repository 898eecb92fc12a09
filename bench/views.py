"""The run page's views: a refresh with every view drawn (replay, Parameters, Layers, Neurons, Trajectory, all in the
one refresh) against the page with none of them, for a 2-8-8-1 spiral net and a 10^6-parameter PyTorch run.

The page is the real app.py, run by Streamlit's AppTest in this process, while real workers train; the two
cases alternate refresh by refresh, half a second apart (so every refresh builds the shared view anew, as the
page's timer does), and each figure is the median of REFRESHES refreshes of the live part as the page times
it ("Updated ... in N ms").
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

from nnobs.app import run_views
from nnobs.lab.create import new_run
from nnobs.launching.lifecycle import stop_worker
from nnobs.protocol.rundir import RunDir
from nnobs.training.builtin.tasks import RunConfig

REFRESHES = 15
APP = str(Path(__file__).resolve().parents[1] / "app.py")
SPIRAL = RunConfig(task="spiral", net="2x8tx8tx1t", eta=0.03, target=10**12, pace=2000)  # leaves a core to the page
MILLION = """
import sys, torch, nnobs, nnobs.torch
torch.manual_seed(0)
torch.set_num_threads(1)
model = torch.nn.Sequential(torch.nn.Linear(1000, 1000), torch.nn.ReLU(), torch.nn.Linear(1000, 10))  # 1,011,010
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.randn(16, 1000), torch.randint(0, 10, (16,))
with nnobs.Run("million", root=sys.argv[1], trainer=nnobs.torch.attach(model, optimizer), report_every=20, pace=20) as run:
    for batch in run.batches():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        run.log(loss.item())
"""


def every_view(view, frames) -> None:
    """All the views in one refresh, as if every tab were open at once."""
    replay_at = run_views.replay_control(view)
    for draw in (run_views.draw_parameters, run_views.draw_layers, run_views.draw_neurons, run_views.draw_trajectory):
        if draw is not run_views.draw_neurons or not run_views.neurons.drawable(view.config):
            draw(view, frames, replay_at)


def no_view(view, frames) -> None:
    """The page without the views: the header, metrics, problems, commands and loss chart only."""


def live_part_took(page: AppTest) -> float:
    """Seconds the page's live part took to draw, as it says under it ("Updated 12:00:00 in 42 ms"): what its
    timer reruns every refresh (the sidebar's controls are a part of their own)."""
    said = next(c.value for c in page.caption if c.value.startswith("Updated "))
    return float(re.search(r" in (\d+) ms", said).group(1)) / 1000


def refresh_costs(run_name: str) -> dict[str, float]:
    """Median seconds of the page's live part, with every view and with none, alternating."""
    pages = {"every": AppTest.from_file(APP, default_timeout=60), "none": AppTest.from_file(APP, default_timeout=60)}
    for page in pages.values():
        page.query_params["run"] = run_name
        page.run()  # the first, cold run of each
    costs: dict[str, list[float]] = {"every": [], "none": []}
    for _ in range(REFRESHES):
        for case, draw in (("every", every_view), ("none", no_view)):
            run_views.draw = draw
            time.sleep(0.5)  # half the page's timer: the shared view is older than its age, built anew
            pages[case].run()
            assert not pages[case].exception, pages[case].exception
            costs[case].append(live_part_took(pages[case]))
    return {case: statistics.median(values) for case, values in costs.items()}


def figures(say) -> None:
    original = run_views.draw
    with tempfile.TemporaryDirectory() as root:
        os.environ["NNOBS_RUNS"] = root
        os.environ["NNOBS_OPERATOR_PASSWORD"] = "none"  # the page steers without signing in
        spiral = RunDir.named("spiral", root)
        new_run(spiral, SPIRAL, by="bench")
        script = subprocess.Popen([sys.executable, "-c", MILLION, root], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            time.sleep(15)  # both train a while: the views have states, layers and a path to draw
            for name, shown in (("spiral", "2-8-8-1 spiral net"), ("million", "10^6-parameter PyTorch run")):
                cost = refresh_costs(name)
                ratio = cost["every"] / cost["none"]
                say(f"page refresh with every view / none, {shown}", ratio, "<= 2", ratio <= 2,
                    f"{cost['every'] * 1000:.0f} vs {cost['none'] * 1000:.0f} ms median of {REFRESHES} (goal: every "
                    f"view under 150 ms: {'met' if cost['every'] < 0.15 else 'NOT met'})")
        finally:
            run_views.draw = original
            stop_worker(spiral)
            script.terminate()
            script.wait(timeout=60)
