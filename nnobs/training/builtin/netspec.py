"""Nets written short: `2x8tx8tx1t` or [2, [8, "tanh"], [8, "tanh"], [1, "tanh"]] to layer widths and activations."""

from __future__ import annotations

import re

from nnobs.protocol.errors import NnobsError

MAX_WIDTH = 100_000  # units in one layer; beyond is a typo, not a net to train here
# The seed author's bench letters (t, r, s) and ours (g sigmoid: s was taken); no letter, no activation.
LETTERS = {"t": "tanh", "r": "relu", "s": "sin", "g": "sigmoid", "": "identity"}
ACTIVATION_NAMES = tuple(LETTERS.values())
_LETTER_OF = {name: letter for letter, name in LETTERS.items()}
_INPUT = re.compile(r"\d+")
# Looser than the grammar (any letter but x, which starts the next layer): a wrong one is named.
_LAYER = re.compile(r"x(\d+)([A-Za-wyz]?)")
FORMS = (
    "a shorthand like 2x8tx8tx1t (the input width, then x<width> per layer, each followed by t tanh, r relu, "
    's sin, g sigmoid or no letter for identity) or a list like [2, [8, "tanh"], [1, "tanh"]]'
)


class NetSpecError(NnobsError, ValueError):
    """A net spec that cannot be read as layer widths and activations."""


def parse_net(spec: str | list) -> tuple[list[int], list[str]]:
    """Widths input first, and one activation name per affine layer; NetSpecError naming the forms otherwise."""
    if isinstance(spec, str):
        sizes, activations = _parse_shorthand(spec.strip())
    elif isinstance(spec, (list, tuple)):
        sizes, activations = _parse_list(list(spec))
    else:
        raise NetSpecError(f"net {spec!r}: write {FORMS}")
    return sizes, activations


def format_net(sizes: list[int], activations: list[str]) -> str:
    """The shorthand of these widths (input first) and activations (one per affine layer)."""
    if len(sizes) < 2 or len(activations) != len(sizes) - 1:
        raise NetSpecError(f"a net of widths {sizes} needs {max(len(sizes) - 1, 1)} activations, not {activations}")
    for width in sizes:
        _check_width(width, sizes)
    for name in activations:
        _check_name(name, sizes)
    return str(sizes[0]) + "".join(f"x{width}{_LETTER_OF[name]}" for width, name in zip(sizes[1:], activations))


def _parse_shorthand(spec: str) -> tuple[list[int], list[str]]:
    head = _INPUT.match(spec)
    if head is None:
        raise NetSpecError(f"net {spec!r} does not start with the input width; write {FORMS}")
    sizes, activations = [int(head.group())], []
    at = head.end()
    while at < len(spec):
        layer = _LAYER.match(spec, at)
        if layer is None:
            raise NetSpecError(f"net {spec!r}: cannot read {spec[at:]!r}; write {FORMS}")
        width, letter = int(layer.group(1)), layer.group(2)
        if letter not in LETTERS:
            raise NetSpecError(
                f"net {spec!r}: {letter!r} is not an activation letter; use t tanh, r relu, s sin, "
                "g sigmoid or no letter for identity"
            )
        sizes.append(width)
        activations.append(LETTERS[letter])
        at = layer.end()
    if not activations:
        raise NetSpecError(f"net {spec!r} has no layer after its input; write {FORMS}")
    for width in sizes:
        _check_width(width, spec)
    return sizes, activations


def _parse_list(spec: list) -> tuple[list[int], list[str]]:
    if len(spec) < 2:
        raise NetSpecError(
            f"net {spec!r} needs the input width and at least one [width, activation] layer; write {FORMS}"
        )
    _check_width(spec[0], spec)
    sizes, activations = [spec[0]], []
    for layer in spec[1:]:
        if not isinstance(layer, (list, tuple)) or len(layer) != 2:
            raise NetSpecError(f"net {spec!r}: each layer after the input is [width, activation], not {layer!r}")
        width, name = layer
        _check_width(width, spec)
        _check_name(name, spec)
        sizes.append(width)
        activations.append(name)
    return sizes, activations


def _check_width(width, spec) -> None:
    if not isinstance(width, int) or isinstance(width, bool) or not 0 < width <= MAX_WIDTH:
        raise NetSpecError(f"net {spec!r}: a layer's width is a whole number from 1 to {MAX_WIDTH:,}, not {width!r}")


def _check_name(name, spec) -> None:
    if not isinstance(name, str) or name not in _LETTER_OF:
        raise NetSpecError(f"unknown activation {name!r} in net {spec!r}; built in: {sorted(ACTIVATION_NAMES)}")
