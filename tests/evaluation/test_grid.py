"""The grid pointing game (issue 21): grids, exact cell masks, chance for the references, and a
planted truth: on a colour network whose class k fires only on colour k, CAM puts all its mass in the
explained cell while the references score 1/4."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from torch import nn

from cnnlens.attribution import create
from cnnlens.cli import main
from cnnlens.data.masks import mask_to_input
from cnnlens.data.transforms import Preprocessing
from cnnlens.errors import InputError
from cnnlens.evaluation import create_metric
from cnnlens.evaluation.benchmark import BenchmarkRun, load_dataset, reference_map, run_benchmark
from cnnlens.evaluation.grid import GridSource, grid_cells, grid_sources, make_grid, quadrant_masks
from cnnlens.evaluation.localisation import energy_in_mask, pointing_game
from cnnlens.models import LoadedModel

#: Colours in [0, 255] and the class each is; in the toy's normalised units (mean 0.5, std 0.25)
#: a colour channel at 255 is +2 and at 0 is -2.
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0)}


class ColourNet(nn.Module):
    """Channel k = ReLU(x . v_k - 4) with v_k the sign pattern of colour k: 2 on a pixel of colour k
    (x . v_k = 6), 0 on every other colour of :data:`COLOURS` (x . v_k <= 2); GAP; logits 10 * GAP."""

    def __init__(self) -> None:
        super().__init__()
        signs = torch.tensor([[1.0 if c > 127 else -1.0 for c in rgb] for rgb in COLOURS.values()])
        self.features = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU())
        self.fc = nn.Linear(4, 4)
        with torch.no_grad():
            self.features[0].weight.copy_(signs.view(4, 3, 1, 1))
            self.features[0].bias.fill_(-4.0)  # type: ignore[union-attr]
            self.fc.weight.copy_(10 * torch.eye(4))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def colour_model() -> LoadedModel:
    return LoadedModel(
        module=ColourNet().eval(),
        name="colours",
        arch="colours",
        class_names=list(COLOURS),
        preprocessing=Preprocessing(resize=32, crop=32, mean=(0.5,) * 3, std=(0.25,) * 3),
        default_layer="features",
        source="test",
    )


def solid(rgb: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> Image.Image:
    return Image.new("RGB", size, rgb)


@pytest.fixture
def colour_folder(tmp_path: Path) -> Path:
    """Five photos: the four colours, a paler red (same class, less confident) and grey (no class)."""
    root = tmp_path / "colours"
    root.mkdir()
    for name, rgb in COLOURS.items():
        solid(rgb).save(root / f"{name}.png")
    solid((200, 90, 90)).save(root / "pale_red.png")
    solid((128, 128, 128)).save(root / "grey.png")
    return root


def test_quadrant_masks_partition_the_grid() -> None:
    masks = quadrant_masks(6)
    assert np.array_equal(sum(m.astype(int) for m in masks), np.ones((6, 6), int))
    assert masks[1][:3, 3:].all() and masks[2][3:, :3].all()
    with pytest.raises(InputError, match="even"):
        quadrant_masks(5)


def test_each_cell_shows_its_image_as_the_model_sees_it() -> None:
    pre = Preprocessing(resize=32, crop=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    grid = make_grid([solid(rgb) for rgb in COLOURS.values()], pre)
    assert grid.size == (64, 64)
    arr = np.asarray(grid)
    for mask, rgb in zip(quadrant_masks(64), COLOURS.values(), strict=True):
        assert (arr[mask] == rgb).all()
    # through the model's preprocessing the cells stay the four quadrants of the input (the resize
    # blends the one pixel row and column on each side of a seam)
    view = np.asarray(pre.view(grid))
    for mask, exact, rgb in zip(quadrant_masks(64), quadrant_masks(32), COLOURS.values(), strict=True):
        assert np.array_equal(mask_to_input(mask, pre), exact)
        inner = ndimage.binary_erosion(exact, iterations=1, border_value=1)
        assert (view[inner] == rgb).all()


def test_sources_are_confident_and_one_per_class(colour_folder: Path) -> None:
    images = [(p.stem, Image.open(p).convert("RGB")) for p in sorted(colour_folder.iterdir())]
    sources = grid_sources(images, colour_model(), min_probability=0.9)
    # grey is uncertain (every channel is 0), pale red loses to red, the most confident red
    assert sorted(s.stem for s in sources) == sorted(COLOURS)
    assert {s.class_name for s in sources} == set(COLOURS)


def test_grids_hold_four_classes_and_use_every_source_evenly() -> None:
    pre = Preprocessing(resize=32, crop=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    sources = [GridSource(f"s{i}", solid((i * 40, 0, 0)), i, f"c{i}", 0.9) for i in range(6)]
    cells = grid_cells(sources, pre, grids=3, seed=1)
    assert len(cells) == 12
    for g in range(3):
        grid = cells[4 * g : 4 * g + 4]
        assert len({c.target for c in grid}) == 4
        assert all(c.image is grid[0].image for c in grid)
    counts = [sum(c.source == s.stem for c in cells) for s in sources]
    assert counts == [2] * 6
    with pytest.raises(InputError, match="at least 4 images"):
        grid_cells(sources[:3], pre)


def test_the_references_score_chance_on_a_grid() -> None:
    """In the model's input view the four cells meet at the centre: the centred Gaussian's four tied
    peaks fall one in each cell (pointing game 1/4 without tolerance) and its mass splits evenly;
    noise averages 1/4."""
    pre = Preprocessing()  # the ImageNet view: resize 256, crop 224
    masks = [torch.from_numpy(mask_to_input(m, pre)) for m in quadrant_masks(2 * pre.crop)]
    assert all(float(m.float().mean()) == 0.25 for m in masks)
    gaussian = reference_map("gaussian", (224, 224))
    for m in masks:
        assert pointing_game(gaussian, m, tolerance=0) == pytest.approx(0.25)
        assert energy_in_mask(gaussian, m) == pytest.approx(0.25, abs=1e-6)
        assert pointing_game(gaussian, m, tolerance=15) == 1.0  # why the grid needs tolerance 0
    # noise, one seed per cell as in the benchmark: hit rate 1/4 (binomial sd 0.03 over 200 cells)
    noise = [reference_map("random", (224, 224), seed) for seed in range(200)]
    hits = [pointing_game(r, masks[i % 4], tolerance=0) for i, r in enumerate(noise)]
    assert np.mean(hits) == pytest.approx(0.25, abs=0.1)
    energy = [energy_in_mask(r, masks[i % 4]) for i, r in enumerate(noise)]
    assert np.mean(energy) == pytest.approx(0.25, abs=0.002)


def test_grid_benchmark_rewards_the_class_and_not_the_centre(colour_folder: Path, tmp_path: Path) -> None:
    model = colour_model()
    items = load_dataset(f"grid:{colour_folder}", model=model, min_probability=0.9)
    assert len(items) == 4 and {i.target for i in items} == {0, 1, 2, 3}
    metrics = [
        create_metric("energy_pointing"),
        create_metric("pointing_game", tolerance=0),
        create_metric("class_sensitivity"),
    ]
    out = tmp_path / "out"
    run = BenchmarkRun(model, [create("cam", model)], metrics, out, out / "cache")
    summary = run_benchmark(run, items)
    rows = {r["row"]: r["metrics"] for r in summary["table"]}
    assert rows["cam"]["energy_pointing"]["mean"] == pytest.approx(1.0)
    assert rows["cam"]["pointing_game"]["mean"] == pytest.approx(1.0)
    assert rows["reference: gaussian"]["energy_pointing"]["mean"] == pytest.approx(0.25, abs=1e-6)
    assert rows["reference: gaussian"]["pointing_game"]["mean"] == pytest.approx(0.25)
    # the CAM of another colour lights another cell: anti-correlated; a reference is the same map
    assert rows["cam"]["class_sensitivity"]["mean"] < -0.3
    assert rows["reference: random"]["class_sensitivity"]["mean"] == 1.0
    assert not any(cell["flag"] for cell in rows["cam"].values())
    assert [i["class_name"] for i in summary["images"]] == [model.class_names[i.target] for i in items]


def test_grid_data_errors(colour_folder: Path) -> None:
    with pytest.raises(InputError, match="needs the model"):
        load_dataset(f"grid:{colour_folder}")
    (colour_folder / "yellow.png").unlink()
    with pytest.raises(InputError, match=r"found 3 \(blue: blue, green: green, red: red\).*--min-prob"):
        load_dataset(f"grid:{colour_folder}", model=colour_model(), min_probability=0.9)
    with pytest.raises(InputError, match="needs a source"):
        load_dataset("grid:", model=colour_model())
    with pytest.raises(InputError, match="--grids is for grid: data"):
        load_dataset(colour_folder, grids=2)


@pytest.mark.slow
def test_cli_grid_benchmark(colour_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("cnnlens.cli.benchmark.model_from_args", lambda args: colour_model())
    out = tmp_path / "out"
    args = ["benchmark", "--data", f"grid:{colour_folder}", "--methods", "cam,saliency", "--grids", "2"]
    args += ["--metrics", "pointing_game,energy_pointing", "--min-probability", "0.9", "--out", str(out)]
    assert main(args) == 0
    summary = json.loads((out / "benchmark.json").read_text())
    assert len(summary["images"]) == 8
    params = {m["name"]: m["params"] for m in summary["metrics"]}
    assert params["pointing_game"] == {"tolerance": 0.0}
    rows = {r["row"]: r["metrics"] for r in summary["table"]}
    for method in ("cam", "saliency"):  # both read only the explained colour's channel
        assert rows[method]["energy_pointing"]["mean"] == pytest.approx(1.0)
        assert rows[method]["pointing_game"]["mean"] == pytest.approx(1.0)
    assert rows["reference: gaussian"]["pointing_game"]["mean"] == pytest.approx(0.25)
