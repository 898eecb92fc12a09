"""Every kind of lifecycle event a run file records, declared once: `{"event": [batch, kind], ...}`."""

from __future__ import annotations

from enum import StrEnum


class EventKind(StrEnum):
    """What happened to a run's worker; equal to the word the run file spells ("started")."""

    STARTED = "started"  # a worker began a generation (resumed_from: the checkpoint's batch)
    TARGET_REACHED = "target_reached"
    SHUTDOWN = "shutdown"  # a clean end, asked for
    PREEMPTED = "preempted"  # Slurm is ending the job: checkpointed, to be requeued
    ERROR = "error"  # the worker ended on an error (error: its message)
    CONTROL_ERROR = "control_error"  # the control file could not be read; the worker goes on
    CHECKPOINT_ERROR = "checkpoint_error"
    DIVERGED = "diverged"  # the loss is no longer a number: training paused
    LOW_DISK = "low_disk"  # paused for free space
    WRITE_ERROR = "write_error"  # paused: the run file cannot be written (error: why)
    DISK_OK = "disk_ok"  # free space is back: training goes on
    REWOUND = "rewound"  # a new line of training from an older checkpoint
    REINIT = "reinit"  # a new line of training from fresh parameters
    EXPLOITED = "exploited"  # a new line of training from another run's checkpoint (population-based training)
    ETA_SCHEDULED = "eta_scheduled"  # the run's eta schedule set eta (eta: [batch, value]) at this batch
    ALERT = "alert"  # a script's own alert (error: its title and text); the worker goes on


# Where a new line of training begins: a start resumes from its checkpoint, a rewind from an older one, a reinit
# goes on with a new net.
NEW_LINE = (EventKind.STARTED, EventKind.REWOUND, EventKind.REINIT, EventKind.EXPLOITED)
# How a generation ends, as its last lifecycle event says.
ENDINGS = (EventKind.SHUTDOWN, EventKind.PREEMPTED, EventKind.ERROR)


def needle(kind: EventKind) -> bytes:
    """The bytes that end an event's topic in a run file's line (b'"started"]'): what a byte search looks for."""
    return f'"{kind}"]'.encode()
