"""Two models in the explorer (``cnnlens serve --model A --model B``) through the API: each model's
top-5 and view, maps per model on one shared colour scale, a cache that keeps the two models apart
(even with the same name and source), targets by name across different class sets, and the command's
start-up checks."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient

from cnnlens.attribution import create
from cnnlens.data.samples import load_sample
from cnnlens.data.transforms import Preprocessing
from cnnlens.errors import InputError
from cnnlens.serve import Explorer, create_app
from cnnlens.viz.overlay import choose_scale
from tests.conftest import tiny_loaded
from tests.serve import png, wait


@pytest.fixture
def pair() -> Iterator[TestClient]:
    """Model A: tinycnn seed 0 (cat, dog, bird, 32 px); model B: tinycnn seed 1 with other classes
    in another order (dog, fish, cat) and a 24-pixel input. Same name and source ("tiny", "test")."""
    a = tiny_loaded(seed=0, classes=3)
    b = tiny_loaded(seed=1, classes=3)
    b = dataclasses.replace(
        b,
        class_names=["dog", "fish", "cat"],
        preprocessing=Preprocessing(resize=None, crop=24, mean=(0.5,) * 3, std=(0.25,) * 3),
    )
    explorer = Explorer([a, b])
    with TestClient(create_app(explorer)) as c:
        yield c
    explorer.close()


def run(client: TestClient, **body: Any) -> dict[str, Any]:
    r = client.post("/api/jobs", json=body)
    assert r.status_code == 200, r.json()
    done = wait(client, r.json())
    assert done["status"] == "done", done
    return done


def test_two_models_top5_views_and_maps_side_by_side(pair: TestClient) -> None:
    explorer = pair.app.state.explorer  # type: ignore[attr-defined]
    info = pair.get("/api/info").json()
    assert [(m["label"], m["classes"]) for m in info["models"]] == [("A", 3), ("B", 3)]
    assert info["models"][1]["class_names"] == ["dog", "fish", "cat"]
    assert info["models"][1]["input_size"] == [24, 24]
    image = load_sample("chelsea").resize((48, 40))
    body = pair.post("/api/images", files={"file": ("c.png", png(image), "image/png")}).json()
    for m, model in enumerate(explorer.models):  # each model's own top-5
        expected = model.top_k(model.prepare(image), 3)[0]
        assert [t["index"] for t in body["tops"][m]["top"]] == [i for i, _, _ in expected]
        assert [t["name"] for t in body["tops"][m]["top"]] == [n for _, n, _ in expected]
    assert body["top"] == body["tops"][0]["top"]
    sizes = [
        Image.open(io.BytesIO(pair.get(f"/api/images/{body['id']}/view.png?model={m}").content)).size
        for m in (0, 1)
    ]
    assert sizes == [(32, 32), (24, 24)]  # each model's own crop

    # the same method and class index on both: two results, each the model's own map
    a = run(pair, image=body["id"], method="gradcam", target=0, model=0)
    b = run(pair, image=body["id"], method="gradcam", target=0, model=1)
    assert a["key"] != b["key"]  # same name and source: the cache still keeps the models apart
    for job, model in ((a, explorer.models[0]), (b, explorer.models[1])):
        x = model.prepare(explorer.image(body["id"]).image)
        direct = create("gradcam", model).explain(x, torch.tensor([0])).numpy(0)
        got = explorer.result(job["key"]).attribution
        assert got.shape == direct.shape and np.allclose(got, direct, atol=1e-6)
    maps = [explorer.result(k).attribution for k in (a["key"], b["key"])]
    assert maps[0].shape == (32, 32) and maps[1].shape == (24, 24)
    result_b = pair.get(f"/api/results/{b['key']}").json()
    assert result_b["model"] == 1 and result_b["model_label"] == "B" and result_b["target_name"] == "dog"
    # one colour scale for the method across the two models: made over both maps
    one = pair.get(f"/api/results/{a['key']}?scale_with={b['key']}").json()["scale"]
    two = pair.get(f"/api/results/{b['key']}?scale_with={a['key']}").json()["scale"]
    assert one == two
    shared = choose_scale(*maps)
    assert (one["vmin"], one["vmax"]) == pytest.approx((shared.vmin, shared.vmax))
    alone = [choose_scale(m) for m in maps]
    assert (alone[0].vmin, alone[0].vmax) != (alone[1].vmin, alone[1].vmax)  # so sharing matters
    heat = Image.open(io.BytesIO(pair.get(f"/api/results/{b['key']}.png?scale_with={a['key']}").content))
    assert heat.size == (24, 24)  # over model B's view


def test_targets_by_name_across_different_class_sets(pair: TestClient) -> None:
    explorer = pair.app.state.explorer  # type: ignore[attr-defined]
    img = pair.post(
        "/api/images", files={"file": ("c.png", png(load_sample("coffee").resize((40, 40))), "image/png")}
    ).json()["id"]
    a = run(pair, image=img, method="saliency", target="dog", model=0)
    b = run(pair, image=img, method="saliency", target="DOG", model=1)
    assert explorer.result(a["key"]).target == 1 and explorer.result(b["key"]).target == 0
    r = pair.post("/api/jobs", json={"image": img, "method": "saliency", "target": "bird", "model": 1})
    assert r.status_code == 400
    assert "model B (tiny) has no class 'bird'" in r.json()["detail"]
    assert run(pair, image=img, method="saliency", target="bird", model=0)["status"] == "done"
    r = pair.post("/api/jobs", json={"image": img, "method": "saliency", "model": 2})
    assert r.status_code == 400 and "model" in r.json()["detail"]
    r = pair.post("/api/jobs", json={"image": img, "method": "saliency", "target": 3, "model": 1})
    assert r.status_code == 400 and "model B" in r.json()["detail"]
    default = run(pair, image=img, method="saliency", model=1)  # no target: model B's own top class
    assert explorer.result(default["key"]).target == explorer.image(img).tops[1][0][0]
    assert pair.get(f"/api/images/{img}/view.png?model=5").status_code == 400


def test_explorer_takes_one_or_two_models() -> None:
    with pytest.raises(InputError, match="one or two models"):
        Explorer([tiny_loaded(), tiny_loaded(), tiny_loaded()])
    one = Explorer(tiny_loaded())
    assert len(one.models) == 1 and one.model is one.models[0]
    assert [m["label"] for m in one.info()["models"]] == ["A"]
    one.close()


def test_serve_names_the_second_model_that_fails_to_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cnnlens.cli import main

    junk = tmp_path / "other.pt"
    junk.write_bytes(b"not a checkpoint")
    assert main(["serve", "--model", "tinycnn", "--no-pretrained", "--model", str(junk)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model B" in err[0] and "other.pt" in err[0], err


def test_serve_loads_two_models_a_name_and_a_checkpoint(tmp_path: Path) -> None:
    import argparse

    from cnnlens.cli.serve import load_models
    from cnnlens.models import load_model
    from cnnlens.models.checkpoint import save_checkpoint

    saved = load_model("tinycnn", pretrained=False)
    save_checkpoint(saved, tmp_path / "tiny.pt")
    args = argparse.Namespace(
        model=["tinycnn", str(tmp_path / "tiny.pt")], weights=None, no_pretrained=True, device=None
    )
    a, b = load_models(args)
    assert a.name == "tinycnn" and b.class_names == saved.class_names
    state = saved.module.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in b.module.state_dict().items())  # B: the file
    assert (
        load_models(argparse.Namespace(model=None, weights=None, no_pretrained=True, device=None))[0].name
        == "efficientnet_lite0"
    )  # no --model: the default, one model
