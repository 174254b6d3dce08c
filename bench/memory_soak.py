"""Memory soak: many explanations in one process, resident memory after warm-up vs at the end.

Not a test (too long): it prints figures. For each method it runs ``explain`` on one sample photo
``N`` times in a row (the same method object, as a server or a notebook would) and samples the
process's resident set size (RSS, from ``/proc/self/statm``) every ``--every`` calls. The figure
that matters is ``growth`` = RSS at the end / RSS after warm-up - 1: a leak (hooks, cached graphs,
tensors kept alive) grows it with every call; flat means within ``--tolerance`` (5 %).

Warm-up is the first ``--warmup`` share of the calls (10 %, at least 5): allocator pools, oneDNN
primitive caches and lazily built fused graphs reach their steady size there.

Usage::

    python bench/memory_soak.py                       # lite0: Grad-CAM x1000, occlusion x100 (quick)
    python bench/memory_soak.py --model tinycnn --gradcam 200 --occlusion 50 --plot /tmp/rss.png
    python bench/memory_soak.py --gradcam 0 --occlusion-param window=56 --occlusion-param stride=56
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from cnnlens.attribution import Explanation, create, get_method
from cnnlens.cli.common import parse_params
from cnnlens.data.samples import load_sample
from cnnlens.models import LoadedModel, load_model


def rss_mb() -> float:
    """The resident set size of this process in MiB (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


@dataclass
class Soak:
    """The RSS samples of one method's run: ``(call index, MiB)`` and the warm-up index."""

    method: str
    calls: int
    warm: int
    samples: list[tuple[int, float]]
    seconds: float

    @property
    def warm_rss(self) -> float:
        return next(mb for i, mb in self.samples if i >= self.warm)

    @property
    def end_rss(self) -> float:
        return self.samples[-1][1]

    @property
    def growth(self) -> float:
        return self.end_rss / self.warm_rss - 1.0


def soak(
    model: LoadedModel,
    method: str,
    calls: int,
    *,
    every: int = 10,
    warmup: float = 0.1,
    on_call: Callable[[Explanation], object] | None = None,
    **params: object,
) -> Soak:
    """Run ``explain`` of ``method`` ``calls`` times on the sample photo; sample RSS every ``every``
    calls. ``on_call`` gets each explanation (a test plants a leak with it)."""
    x = model.prepare(load_sample("chelsea"))
    explainer = create(method, model, **params)
    warm = max(5, int(calls * warmup))
    samples: list[tuple[int, float]] = [(0, rss_mb())]
    start = time.perf_counter()
    for i in range(1, calls + 1):
        explanation = explainer.explain(x)
        if on_call is not None:
            on_call(explanation)
        if i % every == 0 or i in (warm, calls):
            samples.append((i, rss_mb()))
    return Soak(method, calls, warm, samples, time.perf_counter() - start)


def plot(runs: list[Soak], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from cnnlens.outputs import write_with

    fig = Figure(figsize=(8, 3.2 * len(runs)), layout="constrained")
    for ax, run in zip(fig.subplots(len(runs), 1, squeeze=False)[:, 0], runs, strict=True):
        xs, ys = zip(*run.samples, strict=True)
        ax.plot(xs, ys, marker=".", lw=1)
        ax.axvline(run.warm, color="grey", ls="--", lw=0.8)
        ax.axhspan(run.warm_rss, run.warm_rss * 1.05, color="green", alpha=0.1, label="warm-up RSS + 5 %")
        change = f"{run.warm_rss:.1f} -> {run.end_rss:.1f} MiB ({run.growth:+.2%})"
        ax.set_title(f"{run.method} x{run.calls}: {change}")
        ax.set_xlabel("explanations")
        ax.set_ylabel("RSS (MiB)")
        ax.legend(loc="lower right")
    fig.suptitle(title)
    write_with(path, lambda f: fig.savefig(f, format="png", dpi=90))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--gradcam", type=int, default=1000, help="Grad-CAM calls (default 1000)")
    parser.add_argument("--occlusion", type=int, default=100, help="occlusion calls (default 100)")
    parser.add_argument("--every", type=int, default=10, help="sample RSS every N calls (default 10)")
    parser.add_argument("--tolerance", type=float, default=0.05, help="allowed growth (default 0.05)")
    parser.add_argument(
        "--occlusion-param",
        action="append",
        metavar="KEY=VALUE",
        help="occlusion parameter (default: its --quick ones, window=48 stride=24)",
    )
    parser.add_argument("--plot", default="docs/reliability-memory.png", help="PNG of RSS over calls")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_model(args.model)
    threads = torch.get_num_threads()
    print(f"model {args.model}, torch {torch.__version__}, {threads} threads, start RSS {rss_mb():.1f} MiB")
    occlusion = parse_params(args.occlusion_param) or dict(get_method("occlusion").quick_params)
    print(f"occlusion parameters: {occlusion}")
    header = f"{'method':<10} {'calls':>6} {'s/call':>7} {'warm-up MiB':>12} {'end MiB':>9} {'growth':>8}"
    print(header + "  flat?", flush=True)
    runs = []
    for method, calls, params in (("gradcam", args.gradcam, {}), ("occlusion", args.occlusion, occlusion)):
        if calls > 0:
            runs.append(soak(model, method, calls, every=max(1, min(args.every, calls // 10)), **params))
            r = runs[-1]
            flat = "yes" if r.growth <= args.tolerance else "NO"
            print(
                f"{r.method:<10} {r.calls:>6} {r.seconds / r.calls:>7.3f} {r.warm_rss:>12.1f} "
                f"{r.end_rss:>9.1f} {r.growth:>+8.2%}  {flat}",
                flush=True,
            )
    plot(runs, args.plot, f"resident memory over repeated explanations ({args.model})")
    print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
