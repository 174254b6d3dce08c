"""How much a method's map depends on the explained class, on the default model (issue 21).

For each (method, settings) the maps of chelsea for several classes are computed and their Pearson
correlations printed (1.0: the class does not matter), with the seconds each map took.

    PYTHONPATH=src python bench/class_sensitivity.py [--image chelsea] [--layers bn2,blocks.6]
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from cnnlens.attribution import create
from cnnlens.data.samples import load_sample
from cnnlens.models import load_model


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]).double())[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--image", default="chelsea")
    parser.add_argument("--classes", default="", help="comma-separated class indices (default: top-2 + 904)")
    parser.add_argument("--layers", default="bn2,blocks.6,blocks.5")
    parser.add_argument("--weights", default="score,softmax")
    parser.add_argument("--methods", default="scorecam,gradcam")
    args = parser.parse_args()
    model = load_model()
    x = model.prepare(load_sample(args.image))
    top = [c for c, _, _ in model.top_k(x, 2)[0]]
    classes = [int(c) for c in args.classes.split(",")] if args.classes else [*top, 904]
    print("classes:", ", ".join(f"{c} {model.class_names[c]}" for c in classes))
    for method, layer in itertools.product(args.methods.split(","), args.layers.split(",")):
        variants = [{"weights": w} for w in args.weights.split(",")] if method == "scorecam" else [{}]
        for params in variants:
            m = create(method, model, layer=layer, **params)
            start = time.perf_counter()
            maps = m.explain(x.expand(len(classes), -1, -1, -1), target=torch.tensor(classes)).attributions
            seconds = (time.perf_counter() - start) / len(classes)
            pairs = {
                f"{classes[i]}-{classes[j]}": correlation(maps[i], maps[j])
                for i, j in itertools.combinations(range(len(classes)), 2)
            }
            text = "  ".join(f"r({k})={v:.3f}" for k, v in pairs.items())
            print(f"{method:9s} layer={layer:9s} {params}  {text}  {seconds:.1f} s/map", flush=True)


if __name__ == "__main__":
    main()
