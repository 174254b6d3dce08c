"""The explorer's API through FastAPI's TestClient: uploads and limits, the top-5, jobs, the cache,
cancelling, shared colour scales and a server that survives bad requests."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient

from cnnlens.data.samples import load_sample
from cnnlens.serve import Explorer, Limits, create_app
from tests.conftest import tiny_loaded
from tests.serve import png, wait


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    (root / "cats").mkdir()
    load_sample("chelsea").resize((64, 48)).save(root / "cats" / "chelsea.png")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture
def client(data: Path) -> Iterator[TestClient]:
    explorer = Explorer(tiny_loaded(classes=4), data, limits=Limits(max_bytes=200_000, max_pixels=500_000))
    with TestClient(create_app(explorer)) as c:
        yield c
    explorer.close()


def test_info_page_and_top5(client: TestClient) -> None:
    assert "cnnlens explorer" in client.get("/").text
    info = client.get("/api/info").json()
    assert info["data"] == ["cats/chelsea.png"]  # the text file is not listed
    assert {"gradcam", "occlusion"} <= {m["name"] for m in info["methods"]}
    assert "features" in info["layers"]
    image = load_sample("chelsea").resize((64, 48))
    body = client.post("/api/images", files={"file": ("chelsea.png", png(image), "image/png")}).json()
    model = client.app.state.explorer.model  # type: ignore[attr-defined]
    expected = model.top_k(model.prepare(image), 4)[0]
    assert [t["index"] for t in body["top"]] == [i for i, _, _ in expected]
    picked = client.post("/api/images/pick", json={"name": "cats/chelsea.png"}).json()
    assert picked["id"] == body["id"]  # same bytes: same image
    view = Image.open(io.BytesIO(client.get(f"/api/images/{body['id']}/view.png").content))
    assert view.size == (32, 32)  # the model's 32-pixel crop


def test_bad_uploads_get_one_message_and_the_server_goes_on(client: TestClient) -> None:
    big = np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)  # > 200 kB as PNG
    r = client.post("/api/images", files={"file": ("big.png", png(Image.fromarray(big)), "image/png")})
    assert r.status_code == 413 and "larger than the limit" in r.json()["detail"]
    wide = png(Image.new("RGB", (1000, 600)))  # small file, 600,000 pixels > 500,000
    r = client.post("/api/images", files={"file": ("wide.png", wide, "image/png")})
    assert r.status_code == 400 and "pixels" in r.json()["detail"]
    r = client.post("/api/images", files={"file": ("x.png", b"hello, not a picture", "image/png")})
    assert r.status_code == 400 and "x.png" in r.json()["detail"]
    assert client.post("/api/images/pick", json={"name": "../../etc/passwd"}).status_code == 400
    assert client.post("/api/jobs", json={"image": "nope", "method": "gradcam"}).status_code == 404
    assert client.post("/api/jobs", json={"image": 3}).status_code == 422
    assert client.get("/api/info").status_code == 200  # still up


def test_jobs_cache_targets_and_shared_scale(client: TestClient) -> None:
    image = png(load_sample("chelsea").resize((40, 40)))
    img = client.post("/api/images", files={"file": ("c.png", image, "image/png")}).json()["id"]
    r = client.post("/api/jobs", json={"image": img, "method": "gradcam", "target": 9})
    assert r.status_code == 400 and "target" in r.json()["detail"]
    r = client.post("/api/jobs", json={"image": img, "method": "gradcam", "params": {"nope": 1}})
    assert r.status_code == 400
    a = wait(client, client.post("/api/jobs", json={"image": img, "method": "gradcam", "target": 0}).json())
    b = wait(client, client.post("/api/jobs", json={"image": img, "method": "gradcam", "target": 1}).json())
    assert a["status"] == b["status"] == "done" and a["key"] != b["key"] and a["passes"] >= 1
    again = client.post("/api/jobs", json={"image": img, "method": "gradcam", "target": 0}).json()
    assert again["status"] == "done" and again["key"] == a["key"]  # from the cache, at once
    explorer = client.app.state.explorer  # type: ignore[attr-defined]
    from cnnlens.attribution import create

    model = explorer.model
    x = model.prepare(explorer.image(img).image)
    direct = create("gradcam", model).explain(x, torch.tensor([1])).numpy(0)
    assert np.allclose(explorer.result(b["key"]).attribution, direct, atol=1e-6)
    # two targets side by side share one colour scale, made over both maps
    one = client.get(f"/api/results/{a['key']}?scale_with={b['key']}").json()["scale"]
    two = client.get(f"/api/results/{b['key']}?scale_with={a['key']}").json()["scale"]
    assert one == two
    maps = np.stack([explorer.result(k).attribution for k in (a["key"], b["key"])])
    assert one["vmin"] == pytest.approx(float(maps.min())) or one["kind"] == "diverging"
    heat_a = client.get(f"/api/results/{a['key']}.png").content
    heat_b = client.get(f"/api/results/{b['key']}.png").content
    assert heat_a != heat_b and Image.open(io.BytesIO(heat_a)).mode == "RGBA"


def test_cancel_a_long_job_and_two_clients_at_once(client: TestClient) -> None:
    img = client.post("/api/images/pick", json={"name": "cats/chelsea.png"}).json()["id"]
    long = {"image": img, "method": "occlusion", "params": {"window": 2, "stride": 1, "batch_size": 1}}
    job = client.post("/api/jobs", json=long).json()
    end = time.monotonic() + 20
    while client.get(f"/api/jobs/{job['id']}").json()["passes"] < 3 and time.monotonic() < end:
        time.sleep(0.01)
    assert client.delete(f"/api/jobs/{job['id']}").status_code == 200
    done = wait(client, client.get(f"/api/jobs/{job['id']}").json())
    assert done["status"] == "cancelled" and done["passes"] < 31 * 31
    model = client.app.state.explorer.model.module  # type: ignore[attr-defined]
    assert not model._forward_pre_hooks and not model._forward_hooks  # the model as found
    results: list[str] = []

    def browser(target: int) -> None:
        j = client.post("/api/jobs", json={"image": img, "method": "saliency", "target": target}).json()
        results.append(wait(client, j)["status"])

    threads = [threading.Thread(target=browser, args=(t,)) for t in (0, 1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["done"] * 3


def test_serve_command_refuses_a_missing_data_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cnnlens.cli import main

    assert main(["serve", "--model", "tinycnn", "--data", str(tmp_path / "nope")]) == 2
    assert "is not a folder of images" in capsys.readouterr().err
