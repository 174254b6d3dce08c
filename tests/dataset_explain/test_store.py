"""explain_dataset into a store: every image once, maps equal to the methods' own batched output,
numbers and class means equal to their definitions recomputed from the stored maps, read back with
plain zarr and pandas; resuming after lost batches gives the same bytes; other settings are refused."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from PIL import Image

from cnnlens.attribution import create
from cnnlens.data.folders import read_data
from cnnlens.data.stream import stream_batches
from cnnlens.data.synthetic import SynthConfig, generate
from cnnlens.dataset_explain import Job, Recipe, explain_dataset
from cnnlens.dataset_explain.store import cast
from cnnlens.dataset_explain.summaries import map_entropy
from cnnlens.errors import CnnlensError, InputError
from cnnlens.evaluation.localisation import energy_in_mask
from tests.conftest import tiny_loaded

METHODS = ("gradcam", "saliency")
BATCH = 5


def setup(tmp_path: Path, per_class: int = 6) -> tuple[Path, Job, tuple]:
    data = generate(tmp_path / "shapes", SynthConfig(classes=2, per_class=per_class, size=32)).parent
    model = tiny_loaded(classes=2)
    model.class_names = ["circle", "triangle"]
    methods = [create(m, model) for m in METHODS]
    job = Job(data=str(data / "manifest.csv"), recipe=Recipe.of(methods, model="tiny"), batch_size=BATCH)
    return data, job, (model, methods)


def read_store(store: Path) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    group = zarr.open_group(str(store / "maps.zarr"), mode="r")
    return pd.read_parquet(store / "table.parquet"), {m: np.asarray(group[m][...]) for m in METHODS}


def test_store_holds_each_image_once_with_the_methods_batched_maps_and_their_numbers(tmp_path: Path) -> None:
    data, job, built = setup(tmp_path)
    model, methods = built
    summary = explain_dataset(job, tmp_path / "store", built=built)
    table, maps = read_store(tmp_path / "store")
    samples = read_data(data / "manifest.csv").samples
    assert table["index"].tolist() == list(range(len(samples)))
    assert table["path"].tolist() == [str(s.path) for s in samples]
    assert table["label"].tolist() == [s.label for s in samples]
    assert summary["complete"] and summary["explained"] == len(samples) == 12
    group = zarr.open_group(str(tmp_path / "store" / "maps.zarr"), mode="r")
    assert group["gradcam"].chunks == (BATCH, 32, 32) and group["gradcam"].dtype == np.float16
    for batch in stream_batches(samples, model.preprocessing, batch_size=BATCH, masks=True):
        logits = model.logits(batch.inputs)
        rows = batch.indices.numpy()
        assert table["prediction"].to_numpy()[rows].tolist() == logits.argmax(1).tolist()
        expected_score = logits.softmax(1).max(1).values.numpy()
        np.testing.assert_allclose(table["score"].to_numpy()[rows], expected_score, rtol=1e-6)
        for m in methods:
            direct = m.explain(batch.inputs).attributions.numpy()  # target None: the top class
            np.testing.assert_array_equal(maps[m.name][rows], direct.astype(np.float16))
            for j, i in enumerate(rows):
                mask = batch.masks[j, 0] > 0.5
                energy = energy_in_mask(torch.from_numpy(direct[j]), mask)
                assert table[f"{m.name}_energy_in_mask"][i] == pytest.approx(energy, rel=1e-6)
                assert table[f"{m.name}_entropy"][i] == pytest.approx(map_entropy(direct[j]), rel=1e-9)
    means = group["class_mean"]
    for m in METHODS:
        for c in (0, 1):
            sel = table["label"].to_numpy() == c
            expected = maps[m][sel].astype(np.float64).mean(0)
            np.testing.assert_allclose(np.asarray(means[m][c]), expected, rtol=1e-5, atol=1e-12)
    per_class = pd.read_parquet(tmp_path / "store" / "class_summary.parquet")
    assert per_class["images"].tolist() == [6, 6]
    expected_acc = (table["prediction_name"] == table["label_name"]).groupby(table["label"]).mean()
    np.testing.assert_allclose(per_class["accuracy"], expected_acc.to_numpy())


def test_entropy_closed_forms() -> None:
    assert map_entropy(np.ones((4, 4))) == pytest.approx(1.0)
    one_hot = np.zeros((4, 4))
    one_hot[1, 2] = -3.0
    assert map_entropy(one_hot) == 0.0
    half = np.zeros((4, 4))
    half[:2] = 1.0  # 8 of 16 pixels equal: log 8 / log 16
    assert map_entropy(half) == pytest.approx(math.log(8) / math.log(16))
    assert math.isnan(map_entropy(np.zeros((4, 4))))


def test_float16_cast_has_numpys_bits() -> None:
    """The store's float16 conversion (through torch) rounds as NumPy's ``astype``: ties to even,
    subnormals, underflow to ±0, overflow to inf, NaN kept; over magnitudes from 1e-12 to 1e6."""
    tiny = np.float32(2.0**-24)  # the smallest float16 subnormal
    edges = np.array(
        [0.0, -0.0, tiny, tiny / 2, tiny * 0.75, -tiny * 1.5, 2.0**-14, 65504.0, 65519.0, 65520.0, -7e4,
         1 + 2.0**-11, 1 + 3 * 2.0**-11, np.inf, -np.inf, np.nan],
        dtype=np.float32,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    spread = (rng.standard_normal(200_000) * 10.0 ** rng.uniform(-12, 6, 200_000)).astype(np.float32)
    values = np.concatenate([edges, spread]).reshape(-1, 8)
    with np.errstate(over="ignore"):  # 65520 and 7e4 overflow to inf, on purpose
        expected = values.astype(np.float16)
    assert cast(values, "float16").tobytes() == expected.tobytes()
    flat = cast(values, "float16").ravel()  # ties to even: 1 + 2^-11 -> 1, 1 + 3 * 2^-11 -> 1 + 2^-9
    assert (flat[3], flat[9], flat[11], flat[12]) == (0, np.inf, 1, 1 + 2.0**-9)
    assert cast(values, "float32").tobytes() == values.tobytes()


def test_true_and_fixed_targets_are_explained(tmp_path: Path) -> None:
    _, job, built = setup(tmp_path, per_class=3)
    explain_dataset(Job(**{**job.__dict__, "target": "true"}), tmp_path / "true", built=built)
    table = pd.read_parquet(tmp_path / "true" / "table.parquet")
    assert (table["target"] == table["label"]).all()
    explain_dataset(Job(**{**job.__dict__, "target": "triangle"}), tmp_path / "fixed", built=built)
    assert (pd.read_parquet(tmp_path / "fixed" / "table.parquet")["target"] == 1).all()
    with pytest.raises(CnnlensError, match="unknown class"):
        explain_dataset(Job(**{**job.__dict__, "target": "zebra"}), tmp_path / "bad", built=built)
    assert not (tmp_path / "bad").exists()


def test_resume_after_lost_batches_gives_the_same_bytes(tmp_path: Path) -> None:
    _, job, built = setup(tmp_path)
    store = tmp_path / "store"
    explain_dataset(job, store, built=built)
    table, maps = read_store(store)
    before = (store / "table.parquet").read_bytes()
    # a run killed before batches 1 and 2 were marked done: no part, garbage in their chunks
    for b in (1, 2):
        (store / "parts" / f"batch-{b:06d}.parquet").unlink()
    zarr.open_group(str(store / "maps.zarr"), mode="a")["saliency"][BATCH : 3 * BATCH] = 7.0
    (store / "summary.json").unlink()
    seen: list[int] = []
    explain_dataset(job, store, built=built, on_start=lambda todo, total: seen.extend([todo, total]))
    assert seen == [5 + 2, 12]  # only the two lost batches (5 and 2 images) were explained again
    table2, maps2 = read_store(store)
    assert (store / "table.parquet").read_bytes() == before
    pd.testing.assert_frame_equal(table, table2)
    for m in METHODS:
        np.testing.assert_array_equal(maps[m], maps2[m])


def test_other_settings_are_refused_force_replaces_foreign_folder_is_left_alone(tmp_path: Path) -> None:
    _, job, built = setup(tmp_path, per_class=3)
    store = tmp_path / "store"
    explain_dataset(job, store, built=built)
    other = Job(**{**job.__dict__, "dtype": "float32"})
    with pytest.raises(InputError, match="dtype"):
        explain_dataset(other, store, built=built)
    explain_dataset(other, store, built=built, force=True)
    assert zarr.open_group(str(store / "maps.zarr"), mode="r")["gradcam"].dtype == np.float32
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not an explain-dataset store"):
        explain_dataset(job, foreign, built=built, force=True)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_an_unreadable_image_is_a_row_with_its_error_and_a_nan_map(tmp_path: Path) -> None:
    data, job, built = setup(tmp_path, per_class=3)
    broken = sorted((data / "images" / "triangle").glob("*.png"))[0]
    broken.write_bytes(b"not a png")
    summary = explain_dataset(job, tmp_path / "store", built=built)
    table, maps = read_store(tmp_path / "store")
    bad = table.index[table["path"] == str(broken)].tolist()
    assert len(bad) == 1 and summary["explained"] == 5
    assert isinstance(table["error"][bad[0]], str) and str(broken) in table["error"][bad[0]]
    assert np.isnan(maps["gradcam"][bad[0]]).all()
    assert np.isfinite(np.delete(maps["gradcam"], bad[0], axis=0)).all()
    assert [f["path"] for f in summary["failed"]] == [str(broken)]
    assert Image.open(sorted((data / "images" / "circle").glob("*.png"))[0]).size == (32, 32)
