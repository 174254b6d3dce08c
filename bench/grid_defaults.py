"""Choose methods' default settings on the grid pointing game (issue 21).

Runs the benchmark on ``grid:samples`` (2x2 grids of the sample photos, each cell explained for its
class) with the default model, once per (method, settings), and prints the energy pointing game,
the pointing game (tolerance 0), the class sensitivity (correlation with the map of the 2nd class)
and the seconds per map. Chance on the grid is 0.25.

    PYTHONPATH=src python bench/grid_defaults.py [--out /tmp/grid_defaults] [--only scorecam]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from cnnlens.attribution import create
from cnnlens.evaluation import create_metric
from cnnlens.evaluation.benchmark import REFERENCES, BenchmarkRun, load_dataset, run_benchmark
from cnnlens.models import load_model

#: (method, settings) compared; the first of each method is its default before issue 21.
CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("gradcam", {}),
    ("scorecam", {"layer": "blocks.5"}),
    ("scorecam", {"layer": "blocks.6"}),
    ("scorecam", {"layer": "blocks.5", "weights": "softmax"}),
    ("occlusion", {"window": 32, "stride": 16}),
    ("occlusion", {"window": 48, "stride": 24}),
    ("occlusion", {"window": 96, "stride": 48}),
    ("occlusion", {"window": [48, 96], "stride": None}),
    ("occlusion", {"window": [32, 64, 112], "stride": None}),
    ("rise", {"n_masks": 1000, "cells": 7}),
    ("rise", {"n_masks": 256, "cells": 7}),
    ("rise", {"n_masks": 1000, "cells": 4}),
    ("rise", {"n_masks": 1000, "cells": 11}),
]

METRICS = ("energy_pointing", "pointing_game", "class_sensitivity")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("/tmp/grid_defaults"))
    parser.add_argument("--only", default="", help="comma-separated methods to run")
    parser.add_argument("--configs", default="", help="comma-separated 1-based indices into CONFIGS")
    parser.add_argument("--no-references", action="store_true")
    parser.add_argument("--grids", type=int, default=None)
    args = parser.parse_args()
    model = load_model()
    images = load_dataset("grid:samples", model=model, grids=args.grids)
    print(f"{len(images)} grid cells:", ", ".join(i.stem for i in images), flush=True)
    metrics = [
        create_metric("energy_pointing"),
        create_metric("pointing_game", tolerance=0),
        create_metric("class_sensitivity"),
    ]
    only = set(filter(None, args.only.split(",")))
    picked = {int(i) for i in args.configs.split(",") if i}
    todo = [
        (i, c)
        for i, c in enumerate(CONFIGS, start=1)
        if (not only or c[0] in only) and (not picked or i in picked)
    ]
    first = [] if args.no_references else [(0, ("references", {}))]
    for index, (name, params) in [(i, c) for i, c in [*first, *todo]]:
        methods = [] if name == "references" else [create(name, model, **params)]
        refs = REFERENCES if name == "references" else ()
        out = args.out / f"{index:02d}-{name}"
        start = time.perf_counter()
        summary = run_benchmark(BenchmarkRun(model, methods, metrics, out, out / "cache", refs), images)
        seconds = time.perf_counter() - start
        for row in summary["table"]:
            cells = "  ".join(
                f"{m} {row['metrics'][m]['mean']:.3f}±{row['metrics'][m]['ci95']:.3f}" for m in METRICS
            )
            label = row["row"] if name == "references" else f"{name} {json.dumps(params)}"
            per_map = seconds / max(1, 2 * len(images)) if methods else 0.0
            print(f"{label:55s} {cells}  {per_map:.1f} s/map", flush=True)


if __name__ == "__main__":
    main()
