"""nnobs, the Neural Net Observatory: train a net in a detached worker, or your own loop, and watch and steer it live.

The public surface is `__all__`: `Run` (any training loop as a run), `attach` (a numpy net of nnobs.training.builtin;
`nnobs.torch.attach` for PyTorch), `Trainer` (the interface a run trains through), and the error family, all
subclasses of `NnobsError`. Everything else lives in the layer packages (protocol, reading, training, launching,
lab, views, app, cli) and may change.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "CommandError",
    "ControlFileError",
    "LauncherError",
    "LockTimeout",
    "MetricError",
    "MissingExtra",
    "NetSpecError",
    "NnobsError",
    "Run",
    "RunBusy",
    "RunNameError",
    "RunTaken",
    "Trainer",
    "UnsafeFile",
    "attach",
]


def __getattr__(name: str) -> Any:
    # Imported on first use: the CLI's launcher imports this package and must stay cheap.
    if name in ("Run", "RunBusy", "RunTaken", "attach"):
        from nnobs.training import sdk

        return getattr(sdk, name)
    if name == "Trainer":
        from nnobs.training import trainer

        return getattr(trainer, name)
    if name == "LauncherError":
        from nnobs.protocol import jobs

        return getattr(jobs, name)
    if name == "NetSpecError":
        from nnobs.training.builtin import netspec

        return getattr(netspec, name)
    if name in __all__:
        from nnobs.protocol import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'nnobs' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*__all__, "__version__"])
