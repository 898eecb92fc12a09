"""The machine a worker runs on: its CPU and memory (and GPU, where one is in use) in the run file, `status`, and
the page's System view."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from streamlit.testing.v1 import AppTest

from conftest import FOREVER, REPO, wait_for
from nnobs.launching.lifecycle import start_worker
from nnobs.protocol.schema import system_order
from nnobs.views.wording import metric_axis_title, metric_title

APP = str(REPO / "app.py")


def status(runs_root, name: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "nnobs.cli", "--runs", str(runs_root), "status", name, "--json"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_workers_cpu_and_memory_are_in_status_and_on_the_pages_system_view(new_run, runs_root, monkeypatch):
    run = new_run(target=FOREVER)
    start_worker(run)
    # Sampled once a second: two samples make a chart.
    shown = wait_for(lambda: (s := status(runs_root, run.name))["system"].get("cpu") is not None and s,
                     what="the worker's machine in status --json")
    system = shown["system"]
    assert 20 < system["rss_mb"] < 4000, "the worker's resident memory, in MB"
    assert 0 <= system["cpu"] <= 100 * 64, "the worker's CPU use, in % of one core"
    assert not any(name.startswith("system.") for name in shown["evaluations"]), "the machine is not an evaluation"
    text = subprocess.run([sys.executable, "-m", "nnobs.cli", "--runs", str(runs_root), "status", run.name],
                          capture_output=True, text=True, timeout=60).stdout
    assert "system        cpu " in text and "% of a core, memory " in text

    wait_for(lambda: len(run.run_file.read_text().split('"system.cpu"')) > 3, what="three samples of the machine")
    monkeypatch.setenv("NNOBS_RUNS", str(runs_root))
    page = AppTest.from_file(APP, default_timeout=60)
    page.query_params["run"] = run.name
    page.query_params["view"] = "System"
    page.run()
    assert not page.exception, page.exception
    specs = [json.loads(chart.proto.spec) for chart in page.get("vega_lite_chart")]
    titles = {s["title"]["text"] if isinstance(s.get("title"), dict) else s.get("title") for s in specs}
    assert {"CPU (% of one core)", "Resident memory (MB)"} <= titles, titles
    assert "system.cpu" not in titles, "the machine's figures are charted in the System view, not beside the loss"


GPU_SCRIPT = """
import sys, torch, nnobs, nnobs.torch
model = torch.nn.Linear(256, 256).cuda()
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
with nnobs.Run("gpu", trainer=nnobs.torch.attach(model, optimizer), target=10**9, root=sys.argv[1]) as run:
    for batch in run.batches():
        loss = model(torch.randn(64, 256, device="cuda")).square().mean()
        optimizer.zero_grad(); loss.backward(); optimizer.step()
        run.log(loss.item())
"""


def test_a_gpu_in_use_shows_its_utilisation_memory_and_temperature(runs_root, tmp_path):
    torch = pytest.importorskip("torch", reason="the GPU test trains a PyTorch model")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine: the GPU figures are read only where PyTorch has one in use")
    pytest.importorskip("pynvml", reason="GPU figures need nvidia-ml-py: pip install 'nnobs[gpu]'")
    script = subprocess.Popen([sys.executable, "-c", GPU_SCRIPT, str(runs_root)])
    try:
        system = wait_for(lambda: (s := status(runs_root, "gpu")["system"]).get("gpu0.mem_mb") and s, timeout=60,
                          what="the GPU's figures in status --json")
        assert system["gpu0.mem_mb"] > 0 and 0 <= system["gpu0.util"] <= 100 and 0 < system["gpu0.temp_c"] < 120
    finally:
        script.terminate()
        script.wait(timeout=60)


def test_the_machines_figures_go_rank_by_rank_process_before_gpus():
    logged = ["system.rank1.gpu0.util", "system.rank1.cpu", "system.gpu1.temp_c", "system.gpu0.mem_mb",
              "system.rss_mb", "system.cpu", "system.rank10.cpu", "system.rank2.rss_mb", "system.gpu0.util"]
    assert sorted(logged, key=system_order) == [
        "system.cpu", "system.rss_mb", "system.gpu0.util", "system.gpu0.mem_mb", "system.gpu1.temp_c",
        "system.rank1.cpu", "system.rank1.gpu0.util", "system.rank2.rss_mb", "system.rank10.cpu",
    ]


def test_a_jobs_charts_say_each_ranks_figures_rank_0s_too():
    assert metric_title("system.cpu") == "CPU (% of one core)"
    assert metric_title("system.cpu", ranked=True) == "Rank 0: CPU (% of one core)"
    assert metric_title("system.rank1.gpu0.util", ranked=True) == "Rank 1: GPU 0 utilisation (%)"
    assert metric_title("accuracy", ranked=True) == "accuracy"
    assert metric_title("system.rss_mb", ranked=True) == "Rank 0: resident memory (MB)"
    assert metric_axis_title("system.rank1.rss_mb") == "Resident memory (MB)", "the axis leaves the rank to the title"
