"""A user's own PyTorch loop, run as a real script in a real process, on the page through Streamlit's AppTest."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow as pa
import pytest
from streamlit.testing.v1 import AppTest

from conftest import REPO, events, wait_for
from nnobs.protocol.rundir import RunDir

pytest.importorskip("torch")

APP = str(REPO / "app.py")
SEED = 0  # torch.manual_seed in the script: the same net and data every run

# The script a user writes: a tiny MLP on two Gaussian blobs, its accuracy logged beside the loss.
SCRIPT = """
import sys
import torch
import nnobs
import nnobs.torch

name, root, hidden, target, report_every = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.manual_seed({seed})
print("seed", {seed}, flush=True)
width = 2 if hidden < 64 else 100  # the large net: 100 inputs, enough parameters to be summarized
model = torch.nn.Sequential(torch.nn.Linear(width, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 2))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x = torch.randn(128, width)
y = (x[:, 0] > 0).long()
with nnobs.Run(name, root=root, trainer=nnobs.torch.attach(model, opt), target=target, report_every=report_every,
                wait_at_target=True) as run:
    for batch in run.batches():
        opt.zero_grad()
        out = model(x)
        loss = torch.nn.functional.cross_entropy(out, y)
        loss.backward()
        opt.step()
        accuracy = (out.argmax(1) == y).float().mean().item()
        run.log(loss.item(), accuracy=accuracy)
""".format(seed=SEED)


@pytest.fixture
def script_run(tmp_path, runs_root):
    """script_run(name, hidden, target, report_every): the script started in its own process, its run once it
    reached the target (it then idles, answering the page, until the test ends and it is stopped)."""
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    started: list[subprocess.Popen] = []

    def start(name: str, hidden: int, target: int, report_every: int) -> RunDir:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        env.pop("NNOBS_RUN_DIR", None)
        proc = subprocess.Popen([sys.executable, str(script), name, str(runs_root), str(hidden), str(target), str(report_every)],
                                cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started.append(proc)
        run = RunDir.named(name, root=runs_root)

        def reached() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"the script exited with {proc.returncode}:\n{proc.stderr.read()}")
            return run.run_file.exists() and bool(events(run, "target_reached"))

        wait_for(reached, timeout=120, what=f"{name}'s script to reach batch {target}")
        return run

    yield start
    for proc in started:
        proc.terminate()  # a shutdown, as Ctrl-C would be: the script writes its last checkpoint and exits
        proc.wait(timeout=30)


@pytest.fixture
def page(runs_root, monkeypatch):
    monkeypatch.setenv("NNOBS_RUNS", str(runs_root))
    return AppTest.from_file(APP, default_timeout=60)


def charts(at: AppTest) -> dict[str, dict]:
    """Every chart on the page by its title ("title: subtitle" where it has one): its spec, and its data as a frame."""
    found = {}
    for chart in at.get("vega_lite_chart"):
        spec = json.loads(chart.proto.spec)
        data = pa.ipc.open_stream(chart.proto.data.data).read_all().to_pandas() if chart.proto.data.data else None
        title = spec.get("title")
        if isinstance(title, dict):
            title = f"{title['text']}: {title['subtitle']}" if title.get("subtitle") else title["text"]
        found[title] = {"spec": spec, "data": data}
    return found


def opened(page: AppTest, run: RunDir, view: str | None = None) -> AppTest:
    """The run's page, on its tab named view (the first, Parameters, by default)."""
    page.query_params["run"] = run.name
    if view is not None:
        page.query_params["view"] = view
    page.run()
    assert not page.exception, page.exception
    return page


def test_a_pytorch_scripts_page_shows_its_loss_its_accuracy_and_its_parameters_by_name(script_run, page):
    run = script_run("mlp", hidden=8, target=300, report_every=50)
    assert not run.config.exists() and run.description.exists(), "a script's run has run.json, no config.json"
    at = opened(page, run)

    shown = charts(at)
    assert {"Loss", "accuracy"} <= set(shown), f"the loss chart and the metric's own chart, not only {set(shown)}"
    accuracy = shown["accuracy"]["data"]
    assert accuracy["value"].dropna().between(0, 1).all() and accuracy["smoothed"].notna().any()
    assert accuracy["batch"].max() == 300, "the metric's chart spans the run"
    loss = next(m for m in at.metric if m.label == "Loss")
    assert loss.value not in ("-", "diverged") and 0 < float(loss.value) < 1

    lines = shown["State vector: every parameter"]["data"]  # 2 * 8 + 8 + 8 * 2 + 2 = 42 of them
    names = set(lines["parameter"].dropna())
    assert {"0.weight[0,0]", "0.weight[7,1]", "0.bias[0]", "2.weight[1,7]", "2.bias[1]"} <= names, \
        "the state vector's parameters carry the model's own names"
    assert "Decision surface (latest state)" not in shown, "no config: no decision surface"

    captions = " ".join(c.value for c in at.caption)
    assert "script pid" in captions and f"train.py mlp {run.path.parent}" in captions and "Served by script" in captions
    labels = {b.label for b in at.sidebar.button}
    assert "Reinitialize…" not in labels and "Rewind…" in labels, "a script draws its own net: no reinitialize"
    assert not any("config.json" in e.value for e in at.error), "a missing config is no error for a script"
    assert not run.config.exists(), "opening the page made no config.json in the script's run"


def test_a_large_pytorch_nets_page_shows_its_layers_and_a_named_sample(script_run, page):
    run = script_run("wide", hidden=128, target=200, report_every=20)  # 100*128 + 128 + 128*2 + 2 = 13,186
    layers = charts(opened(page, run, "Layers"))
    bands = next(title for title in layers if title.startswith("Distribution of each tensor's values"))
    for title in ("Weight norm per tensor", "Update-to-weight ratio per tensor", bands):
        frame = layers[title]["data"]
        assert set(frame["tensor"].dropna()) == {"0.weight", "0.bias", "2.weight", "2.bias"}, title
        assert frame["batch"].max() == 200, title
    update = layers["Update-to-weight ratio per tensor"]
    assert (update["data"]["value"] > 0).all() and update["spec"]["layer"][0]["encoding"]["y"]["scale"]["type"] == "log"
    assert update["data"]["batch"].min() == 20, "a step's update from the first scheduled report after the start"
    assert (layers[bands]["data"]["p16"] <= layers[bands]["data"]["p84"]).all(), "the bands nest"
    assert "State vector over batches" not in " ".join(layers), "only the open tab is drawn"

    shown = charts(opened(AppTest.from_file(APP, default_timeout=60), run))  # a second visitor, on the first tab

    heat_title = "State vector over batches: a sample of 257 of 13,186 parameters"  # of every tensor, the whole sample
    assert heat_title in shown, f"the sample says what it is a sample of: {set(shown)}"
    sampled = set(shown[heat_title]["data"]["parameter"].dropna())
    assert "0.weight[0,0]" in sampled and any(name.startswith("2.weight[") for name in sampled), \
        "the sample's names, spread over every tensor"
    assert "Step length between state reports" not in shown, "steps of a sample would read as the whole net's"
