"""Run colours for comparisons: Okabe-Ito's colour-blind-safe palette, given out in the order runs were created."""

from __future__ import annotations

from collections.abc import Callable, Sequence

# Okabe & Ito (2008), "Color Universal Design", in an order where neighbours differ most in hue and lightness.
# Their yellow (#F0E442) is left out: on a white chart it is too faint to read as a line.
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000")
DASHES = ((), (6, 3), (2, 2))  # past seven runs the colours come round again, each round with another dash


def assign(runs: Sequence[str], created: Callable[[str], float]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Each run's (colour, dash), by its place in the order the runs were created (then by name).

    Runs created one after another (a sweep started together, a parent and its fork) take neighbouring
    entries of the palette, which differ most; the same set of runs gets the same colours in every
    browser, on every chart and every refresh, whatever order they were picked in.
    """
    ordered = sorted(dict.fromkeys(runs), key=lambda name: (created(name), name))
    return {
        name: (OKABE_ITO[i % len(OKABE_ITO)], DASHES[(i // len(OKABE_ITO)) % len(DASHES)])
        for i, name in enumerate(ordered)
    }
