"""The queued perturbation passes (ScoreQueue): the same results as one sample at a time, fewer passes."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from cnnlens.errors import InputError
from cnnlens.evaluation import Sample, create_metric
from cnnlens.evaluation.faithfulness import baseline_image, pixel_ranks
from cnnlens.evaluation.metrics import Metric, MetricResult
from cnnlens.evaluation.passes import ScoreQueue
from cnnlens.models.loaded import LoadedModel


def samples(model: LoadedModel, images: torch.Tensor, rows: int = 2) -> list[Sample]:
    """``rows`` maps per image (like the benchmark's methods), each image one input tensor object."""
    gen = torch.Generator().manual_seed(2)
    out = []
    for i, x in enumerate(images):
        x = x[None]
        for _ in range(rows):
            out.append(
                Sample(
                    attribution=torch.rand(x.shape[-2:], generator=gen),
                    inputs=x,
                    model=model.module,
                    target=i % 3,
                    preprocessing=model.preprocessing,
                )
            )
    return out


METRICS = [
    ("deletion", {"steps": 4}),
    ("insertion", {"steps": 4, "blur_sigma": 1.0}),
    ("deletion", {"steps": 5, "baseline": "mean", "score": "logit"}),
    ("topk_drop", {"fraction": 0.25}),
]


def queued(metrics: list[Metric], items: list[Sample], queue: ScoreQueue) -> list[list[MetricResult]]:
    pending = [[m.queue(s, queue) for m in metrics] for s in items]
    queue.run()
    return [[done() for done in row if done is not None] for row in pending]


def test_queued_metrics_equal_one_sample_at_a_time(tiny: LoadedModel, images: torch.Tensor) -> None:
    metrics = [create_metric(name, **params) for name, params in METRICS]
    items = samples(tiny, images)
    together = queued(metrics, items, ScoreQueue(tiny.module, batch_size=7))
    for sample, results in zip(items, together, strict=True):
        for metric, got in zip(metrics, results, strict=True):
            alone = metric(sample)
            assert got.value == pytest.approx(alone.value, rel=1e-5, abs=1e-6)
            if alone.curve is not None:
                assert got.curve is not None
                assert got.curve[1] == pytest.approx(alone.curve[1], rel=1e-5, abs=1e-6)


def test_deletion_curve_matches_a_direct_computation(tiny: LoadedModel, images: torch.Tensor) -> None:
    """The planted truth: the images built by hand, scored by the model itself in eval mode."""
    items = samples(tiny, images, rows=1)
    metric = create_metric("deletion", steps=4)
    got = queued([metric], items, ScoreQueue(tiny.module, batch_size=5))
    for sample, [result] in zip(items, got, strict=True):
        x = sample.inputs
        assert isinstance(x, torch.Tensor)
        a = torch.as_tensor(sample.attribution)
        ranks, black = pixel_ranks(a), baseline_image(x, "black", tiny.preprocessing)
        counts = [round(k / 4 * a.numel()) for k in range(5)]
        batch = torch.cat([torch.where((ranks < c)[None, None], black, x) for c in counts])
        with torch.no_grad():
            want = tiny.module.eval()(batch).softmax(1)[:, sample.target].tolist()
        assert result.curve is not None
        assert result.curve[1] == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_images_shared_across_rows_and_metrics_are_evaluated_once(
    tiny: LoadedModel, images: torch.Tensor
) -> None:
    deletion = create_metric("deletion", steps=4)  # black: clean, 3 blends, all black
    insertion = create_metric("insertion", steps=4, blur_sigma=1.0)  # all blurred, 3 blends, clean
    topk = create_metric("topk_drop", fraction=0.25)  # clean and deletion's 25% point
    items = samples(tiny, images[:1], rows=2)
    queue = ScoreQueue(tiny.module)
    queued([deletion, insertion, topk], items, queue)
    # per image: clean, black, blurred once; per map: 3 deletion + 3 insertion blends
    assert queue.forwards == 3 + 2 * 6


def test_a_sample_of_another_model_is_refused(tiny: LoadedModel, images: torch.Tensor) -> None:
    other = dataclasses.replace(tiny, module=torch.nn.Sequential(torch.nn.Flatten()))
    [sample] = samples(other, images[:1], rows=1)
    with pytest.raises(InputError, match="one model"):
        create_metric("deletion").queue(sample, ScoreQueue(tiny.module))


def test_rows_cannot_be_queued_after_the_run(tiny: LoadedModel, images: torch.Tensor) -> None:
    queue = ScoreQueue(tiny.module)
    row = queue.image(images[:1])
    queue.run()
    assert not math.isnan(queue.scores([row], 0)[0])
    with pytest.raises(RuntimeError, match="already run"):
        queue.image(images[1:2])
