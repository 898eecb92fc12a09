"""The new-run form's entries read strictly into a run's name and config, or a refusal naming what is allowed."""

from __future__ import annotations

from typing import Any

from nnobs.app.entry import EntryError, parse_number, read_entry
from nnobs.protocol.errors import NnobsError
from nnobs.protocol.rundir import RunDir, check_run_name
from nnobs.training.builtin.tasks import RunConfig

# Fields of the form beside the task, in the order shown: (config field, label, whole numbers only).
NUMBERS = (
    ("eta", "Learning rate (eta)", False),
    ("batch_size", "Batch size", True),
    ("noise", "Noise", False),
    ("seed", "Seed", True),
    ("target", "Target batches", True),
)


def defaults(task: str) -> RunConfig:
    """What a blank field means for this task: RunConfig's own defaults for it."""
    return RunConfig(task=task)


class FormErrors(NnobsError):
    """Everything wrong with what was typed into the form, each in its own sentence (errors), said at once."""

    def __init__(self, errors: list[str]):
        super().__init__(" ".join(errors))
        self.errors = errors


def read_form(name: str, task: str, net: str, numbers: dict[str, str], root=None) -> tuple[RunDir, RunConfig]:
    """The run to create and its config, from what was typed (a blank keeps the task's default).

    Raises FormErrors naming every field that is wrong and what it takes, before anything is created: a malformed
    number, a setting the checker refuses (its message), a bad or taken name.
    """
    errors: list[str] = []
    values: dict[str, Any] = {"task": task}  # typed per field below; RunConfig.check() refuses what does not fit
    if net.strip():
        values["net"] = net.strip()
        errors += _refusal_of(task, {"net": values["net"]})
    for field, label, whole in NUMBERS:
        typed = numbers.get(field, "").strip()
        if not typed:
            continue
        try:
            values[field] = read_entry(field, typed) if field in ("eta", "target") else parse_number(typed, whole)
        except EntryError as err:
            errors.append(str(err))
            continue
        except ValueError:
            kind = "a whole number" if whole else "a number"
            errors.append(f"{label} must be {kind}, not “{typed[:40]}”.")
            continue
        errors += _refusal_of(task, {field: values[field]})
    if not errors:  # each setting fits alone: what remains is how they go together
        errors += _refusal_of(task, values)
    run = None
    try:
        if not name.strip():
            raise NnobsError(
                "The run needs a name: letters, digits, '.', '_' and '-', starting with a letter or digit."
            )
        run = RunDir.named(check_run_name(name.strip()), root)
        if run.exists():
            raise NnobsError(f"A run named {run.name} exists already: pick another name, or open it from the overview.")
    except NnobsError as err:
        errors.append(str(err))
    if errors or run is None:
        raise FormErrors(errors)
    return run, RunConfig(**values)


def _refusal_of(task: str, values: dict[str, Any]) -> list[str]:
    """What RunConfig.check() says of a config of task with these values (the others its defaults), as a sentence
    that names the setting; none when it takes them."""
    try:
        RunConfig(**{"task": task, **values}).check()
    except NnobsError as err:
        return [str(err).removeprefix("config: ")]  # the form's reader knows no config file
    return []


def free_name(task: str, taken: set[str]) -> str:
    """A name for a new run of task that no run has: spiral-1, spiral-2, ..."""
    n = 1
    while f"{task}-{n}" in taken:
        n += 1
    return f"{task}-{n}"
