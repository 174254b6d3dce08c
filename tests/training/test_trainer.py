"""Training: accuracy on synthetic shapes, exact resume, frozen backbones, run folders, checkpoints."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from cnnlens.data.synthetic import SynthConfig, generate
from cnnlens.errors import InputError
from cnnlens.models import apply_head, load_model
from cnnlens.models.tiny import TinyCNN
from cnnlens.training import Listener, TrainConfig, Trainer, apply_freeze, frozen_units, set_train_mode
from cnnlens.training.trainer import CrossEntropy, TrainingWarning


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Circles and triangles, 32 px, 100 per class, no clutter (a from-scratch CNN learns them fast)."""
    return generate(tmp_path_factory.mktemp("shapes"), SynthConfig(2, 100, 32, clutter=0.0, seed=0))


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("small"), SynthConfig(3, 12, 24, seed=1))


def tiny_config(data: Path, **kw: Any) -> TrainConfig:
    base = TrainConfig(
        data=str(data),
        model="tinycnn",
        freeze="none",
        lr=0.01,
        batch_size=16,
        pretrained=False,
        image_size=32,
    )
    return replace(base, **kw)


def test_tiny_cnn_learns_synthetic_shapes_to_over_90_percent(shapes: Path, tmp_path: Path) -> None:
    trainer = Trainer.create(tiny_config(shapes, epochs=10, augment="none"), tmp_path / "run")
    history = trainer.fit()
    assert trainer.best is not None
    assert trainer.best["val_accuracy"] > 0.9
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    # the run's best.pt is a model every command accepts, with its class names and preprocessing
    loaded = load_model(tmp_path / "run")
    assert loaded.class_names == ["circle", "triangle"]
    assert loaded.head == "linear"
    assert loaded.preprocessing.input_size == (32, 32)
    val = trainer.loader("val", train=False)
    correct = sum(int((loaded.logits(b["image"]).argmax(1) == b["label"]).sum()) for b in val)
    assert correct / len(trainer.parts["val"]) == pytest.approx(trainer.best["val_accuracy"])
    for name in ("config.json", "split.json", "data.json", "history.json", "curves.png", "last.pt"):
        assert (tmp_path / "run" / name).is_file()


class StopAfter(Listener):
    """Interrupts training like Ctrl-C once ``n`` epochs are done (and checkpointed)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def on_epoch(self, record: dict[str, Any]) -> None:
        if record["epoch"] == self.n:
            raise KeyboardInterrupt


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(small: Path, tmp_path: Path) -> None:
    # mlp64 has dropout and "standard" augments: both draw random numbers every epoch
    config = tiny_config(small, epochs=4, head="mlp64", augment="standard", image_size=24, batch_size=8)
    straight = Trainer.create(config, tmp_path / "straight")
    straight.fit()
    interrupted = Trainer.create(config, tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(StopAfter(2))
    assert interrupted.epoch == 2
    resumed = Trainer.resume(tmp_path / "resumed")
    assert resumed.epoch == 2
    resumed.fit()
    a, b = straight.model.module.state_dict(), resumed.model.module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.history == [
        dict(r, seconds=s["seconds"]) for r, s in zip(straight.history, resumed.history)
    ]
    assert Trainer.create(config, tmp_path / "other").model.module.state_dict().keys() == a.keys()


def test_frozen_backbone_keeps_weights_and_batch_norm_statistics(small: Path, tmp_path: Path) -> None:
    trainer = Trainer.create(tiny_config(small, epochs=2, freeze="features"), tmp_path / "run")
    module = trainer.model.module
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainer.fit()
    after = module.state_dict()
    backbone = [k for k in before if not k.startswith("classifier.")]
    assert any("running_mean" in k for k in backbone)
    assert all(torch.equal(before[k], after[k]) for k in backbone)  # weights and BN buffers
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])


def test_freeze_until_layer_and_train_mode() -> None:
    module = TinyCNN(10)
    head = apply_head(module, "linear", 3)
    frozen = frozen_units(module, "until:features.0", head)
    assert frozen == ["features.0.0", "features.0.1", "features.0.2"]
    apply_freeze(module, frozen)
    assert not module.features[0][0].weight.requires_grad
    assert module.features[1][0].weight.requires_grad
    set_train_mode(module, frozen)
    assert not module.features[0].training
    assert not module.features[0][1].training
    assert module.training
    assert module.features[1][1].training
    assert frozen_units(module, "none", head) == []
    with pytest.raises(ValueError, match="would freeze the head"):
        frozen_units(module, "until:classifier", head)
    with pytest.raises(KeyError, match=r"closest: features\.1"):
        frozen_units(module, "until:features.11", head)
    with pytest.raises(ValueError, match="unknown freeze policy"):
        frozen_units(module, "all", head)


def test_run_folder_rules(small: Path, tmp_path: Path) -> None:
    config = tiny_config(small, epochs=1)
    Trainer.create(config, tmp_path / "run").fit()
    with pytest.raises(ValueError, match=r"already exists; use --resume .* or --force"):
        Trainer.create(config, tmp_path / "run")
    Trainer.create(config, tmp_path / "run", force=True)
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.tex").write_text("years of work")
    with pytest.raises(ValueError, match="not a training run; --force will not delete it"):
        Trainer.create(config, tmp_path / "precious", force=True)
    assert not (tmp_path / "run" / "best.pt").exists()  # replaced, not mixed
    with pytest.raises(ValueError, match="not a training run"):
        Trainer.resume(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="no such dataset"):  # a failed start leaves nothing behind
        Trainer.create(replace(config, data=str(tmp_path / "missing")), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_class_weights_and_early_stopping_rule(small: Path, tmp_path: Path) -> None:
    trainer = Trainer.create(tiny_config(small, epochs=5, class_weights=True, patience=2), tmp_path / "run")
    assert isinstance(trainer.objective, CrossEntropy)
    assert trainer.objective.weight is not None
    trainer.history = [{"epoch": e} for e in (1, 2, 3)]
    trainer.best = {"epoch": 1, "val_accuracy": 0.5, "val_loss": 1.0}
    assert trainer.stopped_early()
    assert trainer._improved({"val_accuracy": 0.5, "val_loss": 0.9})
    assert not trainer._improved({"val_accuracy": 0.4, "val_loss": 0.1})


def test_fit_stops_early(small: Path, tmp_path: Path) -> None:
    trainer = Trainer.create(tiny_config(small, epochs=6, patience=2), tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(StopAfter(1))
    trainer.best = {"epoch": 1, "val_accuracy": 2.0, "val_loss": 0.0}  # cannot be beaten
    trainer.fit()
    assert trainer.epoch == 3  # epochs 2 and 3 brought nothing better
    assert trainer.stopped_early()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"head": "original"}, "--head must be one of"),
        ({"epochs": 0}, "--epochs must be at least 1"),
        ({"lr": 0.0}, "--lr must be positive"),
        ({"patience": 0}, "--patience must be at least 1"),
        ({"augment": "lots"}, "--augment must be one of"),
        ({"split": (0.5, 0.5, 0.5)}, "summing to 1"),
    ],
)
def test_bad_settings(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(data="x", **kwargs)


def test_ties_are_broken_on_the_validation_classification_loss(small: Path, tmp_path: Path) -> None:
    trainer = Trainer.create(tiny_config(small, epochs=1), tmp_path / "run")
    trainer.fit()
    record = trainer.history[0]
    # plain cross-entropy: the objective is the classification loss
    assert record["val_cls_loss"] == pytest.approx(record["val_loss"], rel=1e-6)
    assert trainer.best is not None and "val_cls_loss" in trainer.best
    trainer.best = {"epoch": 1, "val_accuracy": 0.5, "val_loss": 0.1, "val_cls_loss": 1.0}
    # same accuracy, lower classification loss, higher objective (e.g. lambda * L_loc): better
    assert trainer._improved({"val_accuracy": 0.5, "val_loss": 5.0, "val_cls_loss": 0.9})
    assert not trainer._improved({"val_accuracy": 0.5, "val_loss": 0.01, "val_cls_loss": 1.1})
    assert trainer._improved({"val_accuracy": 0.6, "val_loss": 9.0, "val_cls_loss": 9.0})


class KilledError(Exception):
    """Stands for a SIGKILL while a file is written."""


def test_best_is_written_before_last(small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cnnlens.training.trainer as trainer_module

    real = trainer_module.atomic_save
    written: list[str] = []

    def save(obj: Any, path: Any) -> Path:
        written.append(Path(path).name)
        if Path(path).name == "last.pt":
            raise KilledError
        return real(obj, path)

    monkeypatch.setattr(trainer_module, "atomic_save", save)
    trainer = Trainer.create(tiny_config(small, epochs=2), tmp_path / "run")
    with pytest.raises(KilledError):
        trainer.fit()
    assert written == ["best.pt", "last.pt"]
    # killed between the two: best.pt holds epoch 1, last.pt was never written, resume restarts
    assert torch.load(tmp_path / "run" / "best.pt", weights_only=True)["extra"]["best"]["epoch"] == 1
    assert not (tmp_path / "run" / "last.pt").exists()
    monkeypatch.setattr(trainer_module, "atomic_save", real)
    with pytest.warns(TrainingWarning, match="starts again from epoch 1"):
        assert Trainer.resume(tmp_path / "run").epoch == 0


def test_config_json_is_written_first(small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cnnlens.training.trainer as trainer_module

    real = trainer_module.save_split
    seen: list[bool] = []

    def save_split(*args: Any, **kw: Any) -> None:
        seen.append((tmp_path / "run" / "config.json").is_file())
        real(*args, **kw)

    monkeypatch.setattr(trainer_module, "save_split", save_split)
    Trainer.create(tiny_config(small, epochs=1), tmp_path / "run")
    assert seen == [True]


def test_force_replaces_a_run_killed_before_its_config(small: Path, tmp_path: Path) -> None:
    config = tiny_config(small, epochs=1)
    Trainer.create(config, tmp_path / "run")
    killed = tmp_path / "killed"  # what a SIGKILL during the first set-up could leave
    killed.mkdir()
    (killed / "split.json").write_text((tmp_path / "run" / "split.json").read_text())
    (killed / ".config.json.tmp").write_text("{")
    with pytest.raises(ValueError, match="already exists"):
        Trainer.create(config, killed)
    Trainer.create(config, killed, force=True).fit()
    assert (killed / "best.pt").is_file()
    assert not (killed / ".config.json.tmp").exists()


def test_a_trained_head_is_continued_not_reinitialised(small: Path, tmp_path: Path) -> None:
    from cnnlens.training import TrainingWarning

    first = tiny_config(small, epochs=1, head="mlp64")
    Trainer.create(first, tmp_path / "run").fit()
    trained = load_model(tmp_path / "run").module.state_dict()
    again = Trainer.create(replace(first, model=str(tmp_path / "run")), tmp_path / "again")
    assert again.head_status == "continued"
    assert again._head == ["classifier"]
    state = again.model.module.state_dict()
    assert state.keys() == trained.keys()
    assert all(torch.equal(state[k], trained[k]) for k in trained)  # the head too
    again.fit()  # and it trains on
    # another class count: the head is re-initialised, and says so
    two = generate(tmp_path / "two", SynthConfig(2, 10, 24, seed=1))
    with pytest.warns(TrainingWarning, match="head is re-initialised"):
        other = Trainer.create(replace(first, data=str(two), model=str(tmp_path / "run")), tmp_path / "o")
    assert other.head_status == "reinitialised"
    out = other.model.module.classifier[-1]  # type: ignore[index]
    assert out.out_features == 2
    assert torch.equal(other.model.module.features[0][0].weight, trained["features.0.0.weight"])


def test_auto_freeze_policy() -> None:
    assert TrainConfig(data="x", head="linear").freeze == "features"
    assert TrainConfig(data="x", head="spn").freeze == "last-stage"
    assert TrainConfig(data="x", head="cnet").freeze == "last-stage"
    assert TrainConfig(data="x", head="spn", pretrained=False).freeze == "none"
    assert TrainConfig(data="x", head="spn", freeze="features").freeze == "features"


def test_last_stage_freezes_all_but_the_last_stage() -> None:
    from cnnlens.models import build_architecture
    from cnnlens.models.heads import attach_head
    from cnnlens.training import last_stage

    module = TinyCNN(10)
    head = apply_head(module, "linear", 3)
    assert last_stage(module, head, 32) == "features.1"
    frozen = frozen_units(module, "last-stage", head, input_size=32)
    assert frozen == frozen_units(module, "until:features.1", head)
    resnet = attach_head(build_architecture("resnet18", pretrained=False)[0], "spn", 3, input_size=64)
    assert last_stage(resnet.module, resnet.heads, 64) == "features.layer3"
    frozen = frozen_units(resnet.module, "last-stage", resnet.heads, input_size=64)
    assert "features.layer3.1.bn2" in frozen
    assert not any(u.startswith(("features.layer4", "classifier", "spn")) for u in frozen)


def test_last_stage_search_leaves_every_module_mode_as_found() -> None:
    from cnnlens.training import last_stage

    module = TinyCNN(10)
    head = apply_head(module, "linear", 3)
    module.train()
    module.features.eval()  # e.g. a frozen part kept in eval mode while the rest trains
    before = {n: m.training for n, m in module.named_modules()}
    last_stage(module, head, 32)
    assert {n: m.training for n, m in module.named_modules()} == before


def test_force_deletes_only_a_runs_own_files(small: Path, tmp_path: Path) -> None:
    config = tiny_config(small, epochs=1)
    run = tmp_path / "run"
    Trainer.create(config, run).fit()
    (run / "eval-test").mkdir()  # what `cnnlens evaluate` adds
    (run / "eval-test" / "metrics.json").write_text("{}")
    (run / "notes.txt").write_text("my notes")
    (run / "src").mkdir()
    (run / "src" / "important.py").write_text("code")
    with pytest.raises(InputError, match=r"holds notes.txt \(and 1 more\), which a training run does not"):
        Trainer.create(config, run, force=True)
    assert (run / "notes.txt").read_text() == "my notes"
    assert (run / "src" / "important.py").read_text() == "code"
    assert (run / "best.pt").is_file()  # refused: nothing deleted
    (run / "notes.txt").unlink()
    (run / "src" / "important.py").unlink()
    (run / "src").rmdir()
    (run / "eval-test" / "mine.txt").write_text("mine")
    with pytest.raises(InputError, match="holds eval-test/mine.txt"):
        Trainer.create(config, run, force=True)
    (run / "eval-test" / "mine.txt").unlink()
    Trainer.create(config, run, force=True)
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "data.json", "split.json"]


def test_force_removes_a_planted_symlink_not_its_target(small: Path, tmp_path: Path) -> None:
    config = tiny_config(small, epochs=1)
    run = tmp_path / "run"
    Trainer.create(config, run)
    victim = tmp_path / "victim.pt"
    victim.write_text("precious")
    os.symlink(victim, run / "last.pt")
    Trainer.create(config, run, force=True).fit()
    assert victim.read_text() == "precious"
    assert not (run / "last.pt").is_symlink()


def test_resume_cleans_stale_tmp_files_of_killed_writes(small: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    Trainer.create(tiny_config(small, epochs=2), run).fit()
    stale = [".last.pt.k1ll3d.tmp", ".best.pt.abc_12.tmp", ".history.json.tmp"]
    kept = [".mine.tmp", "last.pt.tmp"]
    for name in stale + kept:
        (run / name).write_text("x")
    Trainer.resume(run)
    for name in stale:
        assert not (run / name).exists()
    for name in kept:
        assert (run / name).exists()


def test_resume_of_a_truncated_last_pt_is_one_line(small: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    Trainer.create(tiny_config(small, epochs=1), run).fit()
    data = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"last.pt is truncated or not a cnnlens checkpoint") as info:
        Trainer.resume(run)
    assert "\n" not in str(info.value) and "--resume" in str(info.value)
    (run / "last.pt").write_bytes(b"")
    with pytest.raises(InputError, match="truncated"):
        Trainer.resume(run)


def test_resume_without_last_pt_warns_that_it_restarts(small: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    Trainer.create(tiny_config(small, epochs=1), run)  # stopped before its first epoch ended
    with pytest.warns(TrainingWarning, match="no last.pt .* starts again from epoch 1"):
        trainer = Trainer.resume(run)
    assert trainer.epoch == 0


def test_a_file_as_run_folder_is_one_line(small: Path, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(InputError, match="--out .*afile is a file, not a folder"):
        Trainer.create(tiny_config(small, epochs=1), tmp_path / "afile")
    with pytest.raises(InputError, match="--resume .*afile is a file, not a folder"):
        Trainer.resume(tmp_path / "afile")
    assert (tmp_path / "afile").read_text() == "x"


def test_resume_of_a_run_with_a_broken_config_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cnnlens.cli import main
    from cnnlens.training import TrainConfig

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"data": "x",')
    with pytest.raises(ValueError, match=r"config.json: not valid JSON .*training configuration"):
        TrainConfig.load(run / "config.json")
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "config.json" in err and "Traceback" not in err
    (run / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="holds a JSON list, not a training configuration"):
        TrainConfig.load(run / "config.json")
