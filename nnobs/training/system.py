"""The machine as a worker sees it: its CPU use and resident memory, and for each GPU it trains on, utilisation,
memory used and temperature. Sampled about once a second on a thread of its own and logged as metrics named system.*,
so that they are in the run file, on the page's System view and in `status --json` like any metric.

CPU and memory come from the process's own clock and /proc (no dependency); GPUs from NVIDIA's NVML through
nvidia-ml-py (pip install 'nnobs[gpu]'), only where PyTorch has a CUDA device in use: nothing is asked where none is.
"""

from __future__ import annotations

import collections
import os
import resource
import sys
import threading
import time
from typing import Any

from nnobs.protocol.schema import SYSTEM_METRIC
from nnobs.protocol.slot import tell_log

SYSTEM_EVERY_S = 1.0  # how often the machine is sampled
CPU_INTERVAL_S = 0.5  # the shortest interval CPU use is measured over
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class SystemSampler:
    """This process's CPU use since the last sample and its memory now; its GPUs' figures when it uses any.

    Once started, it samples every SYSTEM_EVERY_S on a thread of its own and the training thread takes the newest
    sample when it looks at the clock: a sample reads /proc and asks NVML, system calls that cost a fast loop's step
    more in place than the sample itself (its caches cold after them), and NVML's can take milliseconds."""

    def __init__(self) -> None:
        self._cpu = self._cpu_seconds()
        self._at = time.monotonic()
        self._gpus: list[Any] | None = None  # NVML handles of the GPUs in use, once looked for
        self._nvml: Any = None
        self._newest: collections.deque[dict[str, float]] = collections.deque(maxlen=1)  # taken by take()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._device: int | None = None  # the CUDA device the training thread uses, once it uses one

    def start(self) -> None:
        """Sample now, on the calling (training) thread, then every SYSTEM_EVERY_S on a thread of its own, until
        stop()."""
        if self._thread is None:
            self._note_device()
            self._newest.append(self.sample())
            self._thread = threading.Thread(target=self._keep_sampling, name="nnobs-system", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def take(self) -> dict[str, float] | None:
        """The newest sample not taken yet, if any (on the training thread)."""
        try:
            sampled = self._newest.popleft()
        except IndexError:
            return None
        if self._device is None:
            self._note_device()  # a run may take to a GPU after it started
        return sampled

    def _note_device(self) -> None:
        """The CUDA device the calling thread trains on, once PyTorch has one in use. A thread's current device is
        its own: the sampling thread's is device 0, whatever the training thread set (a DDP rank's local rank)."""
        torch = sys.modules.get("torch")  # never imported here: a numpy run has no GPU to report
        if torch is not None and torch.cuda.is_initialized():
            self._device = torch.cuda.current_device()

    def _keep_sampling(self) -> None:
        try:
            while not self._stopped.wait(SYSTEM_EVERY_S):
                self._newest.append(self.sample())
        except Exception as err:  # observing never kills training: the run goes on without the machine's figures
            tell_log(f"nnobs: sampling the machine failed ({type(err).__name__}: {err}); its figures stop here")

    def sample(self) -> dict[str, float]:
        now, cpu = time.monotonic(), self._cpu_seconds()
        figures = {"rss_mb": resident_mb()}
        if now - self._at >= CPU_INTERVAL_S:  # the process clock ticks in 10 ms: a shorter interval reads as 0 %
            figures["cpu"] = 100.0 * (cpu - self._cpu) / (now - self._at)
            self._cpu, self._at = cpu, now
        for index, handle in enumerate(self._gpus_in_use()):
            figures.update(self._gpu_figures(index, handle))
        return {SYSTEM_METRIC + name: round(value, 3) for name, value in figures.items()}

    @staticmethod
    def _cpu_seconds() -> float:
        times = os.times()
        return times.user + times.system

    def _gpus_in_use(self) -> list[Any]:
        """The NVML handles of the CUDA device the training uses (looked for until it uses one)."""
        if self._gpus:
            return self._gpus
        torch, device = sys.modules.get("torch"), self._device
        if torch is None or device is None:
            return []
        try:
            import pynvml
        except ImportError:
            tell_log("nnobs: GPU figures need nvidia-ml-py (pip install 'nnobs[gpu]'); CPU and memory are shown")
            self._gpus = []
            return []
        try:
            pynvml.nvmlInit()
            bus = torch.cuda.get_device_properties(device).pci_bus_id
            self._gpus, self._nvml = [pynvml.nvmlDeviceGetHandleByPciBusId(bus)], pynvml
        except Exception as err:  # NVML missing from the driver, a device it cannot name: no GPU figures
            tell_log(f"nnobs: no GPU figures: NVML says {err}")
            self._gpus = []
        return self._gpus

    def _gpu_figures(self, index: int, handle: Any) -> dict[str, float]:
        nvml, name = self._nvml, f"gpu{index}."
        try:
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            return {
                name + "util": float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu),
                name + "mem_mb": memory.used / 2**20,
                name + "temp_c": float(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)),
            }
        except Exception:  # a figure the device does not give: the others still are
            return {}


def resident_mb() -> float:
    """This process's resident memory now (/proc), else its peak (getrusage)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * PAGE_BYTES / 2**20
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return peak / (2**20 if sys.platform == "darwin" else 2**10)
