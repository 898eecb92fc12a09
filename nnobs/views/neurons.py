"""The Neurons view of a small built-in net with 2 inputs: what every unit computes over the input plane.

As in TensorFlow Playground: each unit's output over the task's input square as a small map, laid out
layer by layer as the net's diagram, the links between units drawn by their weights (width by magnitude,
colour by sign), and the unit under the pointer drawn large beside it (the net's output until one is pointed
at). Computed from one state vector: the latest, or the one being replayed.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from nnobs.training.builtin.tasks import TASKS, RunConfig, build_network
from nnobs.views.surface import as_picture
from nnobs.views.vegalite import Spec

GRID = 20  # cells across each unit's map
MAX_UNITS = 16  # per layer: wider nets are not drawn (their maps would be too small to read)
MAX_LAYERS = 8  # hidden layers
LAYER_STEP = 3.0  # diagram units between two layers' columns (a map is 1 across)
UNIT_STEP = 1.35  # and between two units of a layer
NEGATIVE, POSITIVE = "#2166ac", "#b2182b"  # the ends of the decision surface's diverging scale: blue below 0, red above


def drawable(config: RunConfig | None) -> str:
    """ "" when the Neurons view can draw this run's net, else why not, in words."""
    if config is None:
        return "The Neurons view draws nets of the built-in worker; this run's net is its script's own."
    if config.sizes[0] != 2:
        return (
            f"The Neurons view draws nets with 2 inputs (the plane's two coordinates); this one has {config.sizes[0]}."
        )
    if len(config.sizes) - 2 > MAX_LAYERS or max(config.sizes[1:]) > MAX_UNITS:
        return (
            f"The Neurons view draws nets of at most {MAX_LAYERS} hidden layers of at most {MAX_UNITS} units, "
            f"small enough to read each unit's map; this one is {config.net}."
        )
    return ""


def unit_maps(config: RunConfig, sv: np.ndarray, grid: int = GRID) -> list[np.ndarray]:
    """Per layer of units, the inputs first and the output last, each unit's output over the task's input square:
    arrays (units, grid * grid), cell k at x1 = axis[k % grid], x2 = axis[k // grid], axis grid points across it."""
    net = build_network(config)
    net.set_state_from_vector(sv)
    extent = TASKS[config.task].extent
    axis = np.linspace(-extent, extent, grid)
    x1, x2 = (a.ravel() for a in np.meshgrid(axis, axis))
    x = np.column_stack((x1, x2))
    maps = [x.T.copy()]
    for affine, activation in zip(net.layers[::2], net.layers[1::2]):  # built-in nets: affine, activation, ...
        x = activation(affine(x))
        maps.append(x.T.copy())
    return maps


def unit_names(config: RunConfig) -> list[list[str]]:
    """Per layer, its units' names: x1 and x2 for the inputs, then L1.0, L1.1, ... (the output layer's last)."""
    names = [["x1", "x2"]]
    for layer, width in enumerate(config.sizes[1:], start=1):
        names.append([f"L{layer}.{unit}" for unit in range(width)])
    return names


def output_unit(config: RunConfig) -> str:
    return unit_names(config)[-1][0]


@lru_cache(maxsize=16)
def neurons_frame(config_json: str, sv: bytes) -> pd.DataFrame:
    """The diagram's data, once per state vector: a row per map cell (kind "cell": unit, its diagram place x, y,
    its cell gx, gy, the output as value) and per link (kind "link": from x, y to x2, y2, the weight as value)."""
    config = RunConfig.from_json(config_json)
    vector = np.frombuffer(sv)
    maps, names = unit_maps(config, vector), unit_names(config)
    tops = [_top(len(layer)) for layer in names]
    cell = 1.0 / GRID
    k = np.arange(GRID * GRID)
    gx, gy = k % GRID, k // GRID
    cells = [
        (layer, unit, layer * LAYER_STEP + gx * cell, tops[layer] - unit * UNIT_STEP - 1 + gy * cell, values)
        for layer, layer_maps in enumerate(maps)
        for unit, values in enumerate(layer_maps)
    ]
    links_from, links_to, weights = _links(config, vector, tops)
    all_names = [name for layer in names for name in layer]
    first_of_layer = np.cumsum([0] + [len(layer) for layer in names])
    n_cells, n_links = len(cells) * GRID * GRID, len(weights)
    unit_codes = np.concatenate(
        [np.full(GRID * GRID, first_of_layer[layer] + unit) for layer, unit, *_ in cells] + [np.full(n_links, -1)]
    )
    return pd.DataFrame(
        {
            "kind": pd.Categorical.from_codes(np.repeat([0, 1], [n_cells, n_links]), categories=["cell", "link"]),
            "unit": pd.Categorical.from_codes(unit_codes, categories=pd.Index(all_names, dtype=object)),
            "x": np.concatenate([x for _, _, x, _, _ in cells] + [links_from[:, 0]]).astype(np.float32),
            "y": np.concatenate([y for _, _, _, y, _ in cells] + [links_from[:, 1]]).astype(np.float32),
            "x2": np.concatenate([np.full(n_cells, np.nan), links_to[:, 0]]).astype(np.float32),
            "y2": np.concatenate([np.full(n_cells, np.nan), links_to[:, 1]]).astype(np.float32),
            "gx": np.concatenate([np.tile(gx, len(cells)), np.full(n_links, -1)]).astype(np.int8),
            "gy": np.concatenate([np.tile(gy, len(cells)), np.full(n_links, -1)]).astype(np.int8),
            "value": as_picture(np.concatenate([values for *_, values in cells] + [weights])),
        }
    )


@lru_cache(maxsize=16)
def neurons_table(config_json: str, sv: bytes) -> pa.Table:
    """neurons_frame as the Arrow table the chart is sent as, made once per state vector for every session."""
    return pa.Table.from_pandas(neurons_frame(config_json, sv), preserve_index=False)


def _top(units: int) -> float:
    """The top of a layer's first map: layers are centred on the diagram's middle line, y = 0."""
    return (units - 1) * UNIT_STEP / 2 + 0.5


def _links(config: RunConfig, sv: np.ndarray, tops: list[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every weight as a link: from the right edge of its unit's map (n, 2) to the left edge of the next layer's
    unit (n, 2), and its value (n,)."""
    starts, ends, weights, offset = [], [], [], 0
    for layer, (n_in, n_out) in enumerate(zip(config.sizes, config.sizes[1:])):
        w = sv[offset : offset + n_in * n_out].reshape(n_in, n_out)
        offset += (n_in + 1) * n_out  # the weights, then the biases
        i, j = np.meshgrid(np.arange(n_in), np.arange(n_out), indexing="ij")
        starts.append(
            np.column_stack((np.full(i.size, layer * LAYER_STEP + 1), tops[layer] - i.ravel() * UNIT_STEP - 0.5))
        )
        ends.append(
            np.column_stack((np.full(j.size, (layer + 1) * LAYER_STEP), tops[layer + 1] - j.ravel() * UNIT_STEP - 0.5))
        )
        weights.append(w.ravel())
    return np.vstack(starts), np.vstack(ends), np.concatenate(weights)


def neurons_spec(config: RunConfig) -> Spec:
    """The diagram (links under the maps) and, beside it, the map of the unit last pointed at, drawn large.

    Written as Vega-Lite directly: the pointer selection drives a second view, which Altair's layer-and-concat
    helpers would make longer to read. Built anew per call: it depends only on the net's shape, so it is the same
    dict every refresh and the browser only swaps the data.
    """
    sizes = config.sizes
    tallest = max(sizes)
    height = max(220, int(46 * tallest * UNIT_STEP))
    x_domain = [-0.3, (len(sizes) - 1) * LAYER_STEP + 1.3]
    y_domain = [-_top(tallest) - 0.3, _top(tallest) + 0.3]
    colour = {
        "field": "value",
        "type": "quantitative",
        "legend": None,
        "scale": {"scheme": "redblue", "reverse": True, "domain": [-1, 1], "clamp": True},
    }
    quiet = {"axis": None}
    cell = 1.0 / GRID
    links = {
        "transform": [{"filter": "datum.kind === 'link'"}, {"calculate": "abs(datum.value)", "as": "magnitude"}],
        "mark": {"type": "rule", "opacity": 0.65},
        "encoding": {
            "x": {"field": "x", "type": "quantitative", "scale": {"domain": x_domain}, **quiet},
            "y": {"field": "y", "type": "quantitative", "scale": {"domain": y_domain}, **quiet},
            "x2": {"field": "x2"},
            "y2": {"field": "y2"},
            "strokeWidth": {
                "field": "magnitude",
                "type": "quantitative",
                "legend": None,
                "scale": {"range": [0.3, 6], "zero": True},
            },
            "color": {"condition": {"test": "datum.value < 0", "value": NEGATIVE}, "value": POSITIVE},
            "tooltip": [{"field": "value", "type": "quantitative", "format": ".3f", "title": "weight"}],
        },
    }
    maps = {
        "transform": [
            {"filter": "datum.kind === 'cell'"},
            {"calculate": f"datum.x + {cell * 1.02}", "as": "right"},
            {"calculate": f"datum.y + {cell * 1.02}", "as": "top"},
        ],
        "params": [
            {
                "name": "unit",
                "value": [{"unit": output_unit(config)}],
                "select": {"type": "point", "fields": ["unit"], "on": "pointerover", "clear": False},
            }
        ],
        "mark": {"type": "rect"},
        "encoding": {
            "x": {"field": "x", "type": "quantitative", "scale": {"domain": x_domain}, **quiet},
            "x2": {"field": "right"},
            "y": {"field": "y", "type": "quantitative", "scale": {"domain": y_domain}, **quiet},
            "y2": {"field": "top"},
            "color": colour,
            "tooltip": [
                {"field": "unit", "type": "nominal"},
                {"field": "value", "type": "quantitative", "format": ".3f", "title": "output"},
            ],
        },
    }
    label_mark: dict[str, Any] = {"type": "text", "align": "left", "baseline": "top", "dy": 3, "fontSize": 10}
    labels: dict[str, Any] = {
        "transform": [{"filter": "datum.kind === 'cell' && datum.gx === 0 && datum.gy === 0"}],
        "mark": {**label_mark, "color": "#444"},
        "encoding": {
            "x": {"field": "x", "type": "quantitative"},
            "y": {"field": "y", "type": "quantitative"},
            "text": {"field": "unit", "type": "nominal"},
        },
    }
    # Under each label, its text in thick white: the links that pass between the maps run behind it, not through it.
    halos = {**labels, "mark": {**label_mark, "stroke": "white", "strokeWidth": 4, "strokeJoin": "round"}}
    large = {
        "width": 260,
        "height": 260,
        "transform": [
            {"filter": "datum.kind === 'cell'"},
            {"filter": {"param": "unit"}},
            {"calculate": "datum.gx + 1.02", "as": "right"},
            {"calculate": "datum.gy + 1.02", "as": "top"},
        ],
        "layer": [
            {
                "mark": {"type": "rect"},
                "encoding": {
                    "x": {"field": "gx", "type": "quantitative", "scale": {"domain": [0, GRID]}, **quiet},
                    "x2": {"field": "right"},
                    "y": {"field": "gy", "type": "quantitative", "scale": {"domain": [0, GRID]}, **quiet},
                    "y2": {"field": "top"},
                    "color": colour,
                    "tooltip": [
                        {"field": "unit", "type": "nominal"},
                        {"field": "value", "type": "quantitative", "format": ".3f", "title": "output"},
                    ],
                },
            },
            {
                "transform": [{"filter": "datum.gx === 0 && datum.gy === 0"}],
                "mark": {
                    "type": "text",
                    "align": "left",
                    "baseline": "bottom",
                    "dy": -6,
                    "fontSize": 13,
                    "fontWeight": "bold",
                },
                "encoding": {"x": {"value": 0}, "y": {"value": 0}, "text": {"field": "unit", "type": "nominal"}},
            },
        ],
    }
    return {
        "hconcat": [{"width": 130 * len(sizes), "height": height, "layer": [links, maps, halos, labels]}, large],
        "config": {"view": {"stroke": None}},
    }
