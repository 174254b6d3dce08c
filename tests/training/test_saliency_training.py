"""Saliency-aware training (seed 004): partial masks, lambda 0, checkpoints, the SPN method."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cnnlens.attribution import create
from cnnlens.data.synthetic import SynthConfig, generate
from cnnlens.evaluation.localisation import soft_dice
from cnnlens.models import load_model
from cnnlens.models.saliency_net import SaliencyAwareNet
from cnnlens.training import Listener, TrainConfig, Trainer


@pytest.fixture(scope="module")
def masked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three shapes, 12 per class, 24 px, with exact masks in the manifest."""
    return generate(tmp_path_factory.mktemp("masked"), SynthConfig(3, 12, 24, seed=3))


def sa_config(data: Path, **kw: Any) -> TrainConfig:
    base = TrainConfig(
        data=str(data),
        model="tinycnn",
        head="spn",
        freeze="none",
        lr=0.01,
        batch_size=8,
        pretrained=False,
        image_size=32,
        epochs=2,
        augment="none",
    )
    return replace(base, **kw)


def test_lambda_zero_reproduces_plain_training(masked: Path, tmp_path: Path) -> None:
    plain = Trainer.create(sa_config(masked, head="cnet"), tmp_path / "plain")
    plain.fit()
    sa = Trainer.create(sa_config(masked, loc_weight=0.0), tmp_path / "sa")
    sa.fit()
    for a, b in zip(plain.history, sa.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    net_a, net_b = plain.model.module, sa.model.module
    assert isinstance(net_a, SaliencyAwareNet) and isinstance(net_b, SaliencyAwareNet)
    assert net_a.spn is None and net_b.spn is not None
    for (name, pa), (_, pb) in zip(net_a.named_parameters(), net_b.named_parameters()):
        assert torch.allclose(pa, pb, atol=1e-6), name
    # with lambda > 0 the localisation loss reaches the (trainable) F-Net: its weights change
    sa2 = Trainer.create(sa_config(masked, loc_weight=1.0), tmp_path / "sa2")
    sa2.fit()
    assert sa2.history[0]["train_loss"] > sa.history[0]["train_loss"]
    net_c = sa2.model.module
    assert isinstance(net_c, SaliencyAwareNet)
    fnet_b, fnet_c = dict(net_b.features.named_parameters()), dict(net_c.features.named_parameters())
    assert fnet_b.keys() == fnet_c.keys()
    for name in fnet_b:
        assert not torch.allclose(fnet_b[name], fnet_c[name], atol=1e-6), name
    # the validation classification loss leaves lambda * L_loc out; the objective does not
    first = sa2.history[0]
    assert first["val_cls_loss"] < first["val_loss"]
    assert sa.history[0]["val_cls_loss"] == pytest.approx(sa.history[0]["val_loss"], rel=1e-5)


def test_default_freeze_lets_the_localisation_loss_reach_a_pretrained_f_net(
    masked: Path, tmp_path: Path
) -> None:
    """Seed 004 back-propagates L_loc into the F-Net; with a frozen F-Net it only trains the SPN."""
    import warnings

    from cnnlens.training import TrainingWarning

    # tinycnn's "pretrained" weights are its seeded initialisation: freeze auto -> last-stage
    config = sa_config(masked, freeze="auto", pretrained=True)
    assert config.freeze == "last-stage"
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrainingWarning)
        plain = Trainer.create(replace(config, loc_weight=0.0), tmp_path / "l0")
        sa = Trainer.create(config, tmp_path / "l1")
    init = {k: v.clone() for k, v in sa.model.module.state_dict().items()}
    plain.fit()
    sa.fit()
    a, b = plain.model.module.state_dict(), sa.model.module.state_dict()
    assert sa.frozen == [f"features.{i}.{j}" for i in (0, 1) for j in range(3)]  # tinycnn's blocks 1, 2
    assert all(torch.equal(b[k], init[k]) for k in init if k.startswith(("features.0.", "features.1.")))
    last = [k for k in a if k.startswith("features.2.") and "weight" in k]
    assert last and all(not torch.allclose(a[k], b[k]) for k in last)
    with pytest.warns(TrainingWarning, match="freezes the whole F-Net"):
        Trainer.create(replace(config, freeze="features"), tmp_path / "frozen")


def test_a_trained_saliency_aware_run_is_continued(masked: Path, tmp_path: Path) -> None:
    Trainer.create(sa_config(masked, epochs=1), tmp_path / "run").fit()
    trained = load_model(tmp_path / "run").module.state_dict()
    again = Trainer.create(sa_config(masked, model=str(tmp_path / "run")), tmp_path / "again")
    assert again.head_status == "continued" and again._head == ["classifier", "spn"]
    state = again.model.module.state_dict()
    assert state.keys() == trained.keys() and all(torch.equal(state[k], trained[k]) for k in state)


def test_mask_ratio_keeps_a_seeded_fraction(masked: Path, tmp_path: Path) -> None:
    trainer = Trainer.create(sa_config(masked, mask_ratio=0.25, epochs=1), tmp_path / "r")
    train = trainer.parts["train"]
    kept = [s for s in train if s.mask is not None]
    assert len(kept) == round(0.25 * len(train))
    again = Trainer.create(sa_config(masked, mask_ratio=0.25, epochs=1), tmp_path / "r2")
    assert [s.path for s in again.parts["train"] if s.mask is not None] == [s.path for s in kept]
    other = Trainer.create(sa_config(masked, mask_ratio=0.25, epochs=1, seed=5), tmp_path / "r3")
    assert [s.path for s in other.parts["train"] if s.mask is not None] != [s.path for s in kept]
    # validation and test keep every mask (the localisation is measured on them)
    assert all(s.mask is not None for s in trainer.parts["test"])


def test_images_without_masks_give_no_localisation_gradient(masked: Path, tmp_path: Path) -> None:
    trainer = Trainer.create(sa_config(masked, mask_ratio=0.0, epochs=1), tmp_path / "none")
    batch = next(iter(trainer.loader("train", train=True)))
    assert not bool(batch["has_mask"].any())
    module = trainer.model.module
    assert isinstance(module, SaliencyAwareNet) and module.spn is not None
    module.train()
    loss, _ = trainer.objective(module, batch)
    loss.backward()
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0.0 for p in module.spn.parameters())


def test_spn_learns_the_masks_and_the_run_explains_itself(tmp_path: Path) -> None:
    data = generate(tmp_path / "shapes", SynthConfig(2, 40, 32, clutter=0.0, seed=0))
    before = Trainer.create(sa_config(data, epochs=1, lr=0.0001), tmp_path / "untrained")
    trainer = Trainer.create(sa_config(data, epochs=6, loc_loss="l2"), tmp_path / "run")
    trainer.fit()
    model = load_model(tmp_path / "run")
    assert model.head == "spn" and isinstance(model.module, SaliencyAwareNet)
    assert model.default_layer is not None and model.default_layer.startswith("features")

    def dice(m: torch.nn.Module) -> float:
        scores = []
        for b in trainer.loader("test", train=False):
            with torch.no_grad():
                sal = m.saliency(b["image"])  # type: ignore[operator]
            scores += [soft_dice(s, k[0]) for s, k in zip(sal, b["mask"])]
        return sum(scores) / len(scores)

    before.model.module.eval()
    assert dice(model.module) > dice(before.model.module) + 0.1
    batch = next(iter(trainer.loader("test", train=False)))["image"][:2]
    spn = create("spn", model).explain(batch)
    assert spn.attributions.shape == (2, 32, 32)
    assert float(spn.attributions.min()) >= 0.0 and float(spn.attributions.max()) <= 1.0
    cam = create("gradcam", model).explain(batch)
    assert cam.layer == model.default_layer


def test_errors(tmp_path: Path) -> None:
    unmasked = tmp_path / "folders"
    for cls in ("a", "b"):
        (unmasked / cls).mkdir(parents=True)
        for i in range(4):
            from PIL import Image

            Image.new("RGB", (24, 24), (i * 40, 0, 0)).save(unmasked / cls / f"{i}.png")
    with pytest.raises(ValueError, match="needs masks"):
        Trainer.create(sa_config(unmasked), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="mask-ratio"):
        sa_config(unmasked, mask_ratio=1.5)
    with pytest.raises(ValueError, match="loc-loss"):
        sa_config(unmasked, loc_loss="dice")
    with pytest.raises(ValueError, match="lambda"):
        sa_config(unmasked, loc_weight=-1.0)
    lite = load_model("tinycnn", pretrained=False)
    with pytest.raises(ValueError, match="no saliency prediction net"):
        create("spn", lite)


def test_experiment_end_to_end_and_resume(masked: Path, tmp_path: Path) -> None:
    from cnnlens.training.experiment import Backbone, ExperimentConfig, grid, run_experiment

    cfg = ExperimentConfig(
        data=str(masked),
        backbones=(Backbone("tinycnn", pretrained=False),),
        ratios=(0.0, 0.5),
        loc_losses=("ce", "l1"),
        seeds=2,
        epochs=1,
        batch_size=8,
        image_size=32,
        augment="none",
        figure_images=2,
    )
    assert [(s.ratio, s.loc_loss, s.seed) for s in grid(cfg)] == [
        (0.0, None, 0),
        (0.0, None, 1),
        (0.5, "ce", 0),
        (0.5, "ce", 1),
        (0.5, "l1", 0),
        (0.5, "l1", 1),
    ]
    out = tmp_path / "exp"
    result = run_experiment(cfg, out)
    rows = result.table()
    assert [r["config"] for r in rows] == ["baseline", "SA r=0.5 ce", "SA r=0.5 l1"]
    assert all(r["seeds"] == 2 and r["weights"] == "random init" for r in rows)
    assert rows[0]["spn_iou"] is None and rows[1]["spn_iou"] is not None
    for r in rows:
        mean, std = r["f1"]
        assert 0.0 <= mean <= 1.0 and std >= 0.0
        assert 0.0 <= r["gradcam_energy"][0] <= 1.0
    for r in rows:  # sample standard deviation over the seeds (ddof 1)
        f1 = [x["scores"]["f1"] for x in result.runs if x["config"] == r["config"]]
        assert r["f1"][1] == pytest.approx(float(np.std(f1, ddof=1)))
    assert [(r["method"], r["mask_ratio"], r["loc_loss"]) for r in rows] == [
        ("baseline", 0.0, None),
        ("saliency-aware", 0.5, "ce"),
        ("saliency-aware", 0.5, "l1"),
    ]
    md = (out / "results.md").read_text()
    assert "| backbone | weights | method | mask ratio | loc loss | accuracy |" in md
    assert "| tinycnn:random | random init | saliency-aware | 0.5 | CE |" in md and "±" in md
    assert "| tinycnn:random | random init | baseline | 0 | — |" in md
    assert "## Localisation loss compared" in md
    assert "| tinycnn:random | random init | L1 | 0.5 |" in md
    assert all(r["train_config"]["epochs"] == 1 and r["threshold"] == 0.5 for r in result.runs)
    assert (out / "figure.png").stat().st_size > 1000
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["runs"]) == 6
    # a second call reuses the finished runs: no training (the run folders are untouched)
    stamp = (out / "runs" / "tinycnn-random" / "baseline" / "seed0" / "best.pt").stat().st_mtime_ns
    again = run_experiment(cfg, out)
    assert again.table() == rows
    assert (out / "runs" / "tinycnn-random" / "baseline" / "seed0" / "best.pt").stat().st_mtime_ns == stamp


def _tiny_experiment(data: Path, **kw: Any) -> Any:
    from cnnlens.training.experiment import Backbone, ExperimentConfig

    base = ExperimentConfig(
        data=str(data),
        backbones=(Backbone("tinycnn", pretrained=False),),
        ratios=(0.5,),
        seeds=1,
        epochs=2,
        batch_size=8,
        image_size=32,
        augment="none",
        figure_images=1,
    )
    return replace(base, **kw)


def test_experiment_resumes_a_run_stopped_mid_training(masked: Path, tmp_path: Path) -> None:
    from cnnlens.training.experiment import grid, run_experiment, train_config
    from cnnlens.training.trainer import absolute_paths

    cfg = _tiny_experiment(masked)
    (spec,) = grid(cfg)
    run = tmp_path / "exp" / "runs" / spec.folder

    class StopAfterOne(Listener):  # like Ctrl-C once epoch 1 is checkpointed
        def on_epoch(self, record: dict[str, Any]) -> None:
            raise KeyboardInterrupt

    stopped = Trainer.create(absolute_paths(train_config(cfg, spec)), run)
    with pytest.raises(KeyboardInterrupt):
        stopped.fit(StopAfterOne())
    assert (run / "last.pt").is_file() and not (run / "result.json").exists()
    first_epoch = stopped.history[0]
    result = run_experiment(cfg, tmp_path / "exp")
    (record,) = result.runs
    history = json.loads((run / "history.json").read_text())
    assert len(history) == 2
    assert history[0] == first_epoch  # resumed (the same epoch 1, timing included), not retrained
    assert record["train_config"]["epochs"] == 2


def test_experiment_retrains_runs_whose_settings_changed(masked: Path, tmp_path: Path) -> None:
    from cnnlens.training.experiment import run_experiment

    out = tmp_path / "exp"
    (one,) = run_experiment(_tiny_experiment(masked, epochs=1), out).runs
    assert one["train_config"]["epochs"] == 1
    (two,) = run_experiment(_tiny_experiment(masked, epochs=2), out).runs
    assert two["train_config"]["epochs"] == 2
    assert len(json.loads((Path(two["run"]) / "history.json").read_text())) == 2
    (lam,) = run_experiment(_tiny_experiment(masked, epochs=2, loc_weight=0.5), out).runs
    assert lam["train_config"]["loc_weight"] == 0.5
    # a new threshold only re-scores: the weights stay
    stamp = (Path(lam["run"]) / "best.pt").stat().st_mtime_ns
    (rescored,) = run_experiment(_tiny_experiment(masked, epochs=2, loc_weight=0.5, threshold=0.3), out).runs
    assert rescored["threshold"] == 0.3
    assert (Path(lam["run"]) / "best.pt").stat().st_mtime_ns == stamp


def test_experiment_default_freeze_trains_pretrained_f_nets(masked: Path) -> None:
    from cnnlens.training.experiment import Backbone, grid, train_config

    backbones = (Backbone("resnet18"), Backbone("tinycnn", pretrained=False))
    cfg = _tiny_experiment(masked, backbones=backbones, ratios=(0.0, 1.0))
    freeze = {(s.backbone.label, s.ratio): train_config(cfg, s).freeze for s in grid(cfg)}
    assert freeze == {
        ("resnet18", 0): "last-stage",  # the baseline too: a fair comparison
        ("resnet18", 1): "last-stage",
        ("tinycnn:random", 0): "none",
        ("tinycnn:random", 1): "none",
    }


def test_experiment_bad_settings(masked: Path) -> None:
    from cnnlens.training.experiment import Backbone, ExperimentConfig

    with pytest.raises(ValueError, match="ratios"):
        ExperimentConfig(data=str(masked), ratios=(0.0, 2.0))
    with pytest.raises(ValueError, match="loc-losses"):
        ExperimentConfig(data=str(masked), loc_losses=("dice",))
    with pytest.raises(ValueError, match="seeds"):
        ExperimentConfig(data=str(masked), seeds=0)
    with pytest.raises(ValueError, match="NAME:random"):
        Backbone.parse("resnet18:imagenet")
    assert Backbone.parse("resnet18:random") == Backbone("resnet18", pretrained=False)
