"""The server-drawn SVG: round ticks, labels that tell ticks apart, series and lineage layout."""

from __future__ import annotations

import re

from shoestring.ui import charts


def test_nice_ticks_cover_the_range_with_round_steps() -> None:
    assert charts.nice_ticks(0, 97) == [0, 20, 40, 60, 80, 100]
    t = charts.nice_ticks(10.79, 10.83, 4)
    assert t[0] <= 10.79 and t[-1] >= 10.83 and len(t) >= 3
    assert len(set(charts.tick_labels(t))) == len(t)  # 10.79, 10.80 ... never "10.8" twice
    assert charts.nice_ticks(1, 3, 6, integer=True) == [1, 2, 3]  # optimizer steps are whole numbers
    assert charts.nice_ticks(5, 5)[0] <= 5 <= charts.nice_ticks(5, 5)[-1]


def test_line_chart_draws_each_series_and_reference_lines() -> None:
    svg = charts.line_chart([charts.Series("train loss", [(1, 3.0), (2, 2.5), (3, 2.0)]),
                             charts.Series("validation loss", [(3, 2.2)], markers=True)],
                            title="loss", x_label="step", y_label="nats", hlines=[(2.8, "planned", "#000")])
    assert re.findall(r'data-series="([^"]+)" data-points="(\d+)"', svg) == [("train loss", "3"), ("validation loss", "1")]
    assert "planned 2.8" in svg and svg.count("<circle") == 1
    assert "no points yet" in charts.line_chart([charts.Series("x", [])], title="t", x_label="", y_label="")


def test_dag_puts_each_node_right_of_its_inputs_and_routes_long_edges_below() -> None:
    nodes = [charts.Node(i, i, "kind", f"/{i}", "#000") for i in ("data", "plan", "train", "eval")]
    edges = [("data", "plan", "dataset"), ("plan", "train", "plan"), ("data", "train", "dataset"),
             ("train", "eval", "model")]
    svg = charts.dag(nodes, edges)
    xs = {node: float(x) for node, x in re.findall(r'data-node="(\w+)" data-x="([\d.]+)"', svg)}
    assert xs["data"] < xs["plan"] < xs["train"] < xs["eval"]
    assert svg.count('class="edge"') == 4 and svg.count(" L") == 1  # data -> train skips a column
