"""The explorer's web layer: a FastAPI app over an :class:`~cnnlens.serve.explorer.Explorer` and one
page (``static/index.html``, plain HTML and JavaScript, no build step).

API (JSON unless said otherwise):

- ``GET /api/info``: ``models`` (one or two: ``A``, ``B``), each with its classes, methods and
  layers (model ``A``'s also at the top level), the images of ``--data``, upload limits.
- ``POST /api/images`` (multipart ``file``): upload an image; ``POST /api/images/pick``
  ``{"name"}``: take one of ``--data``. Both answer ``{"id", "name", "top", "tops"}``: the top-5 of
  model ``A`` and of each model.
- ``GET /api/images/{id}/view.png?model=0``: the part of the image that model sees.
- ``POST /api/jobs`` ``{"image", "method", "target", "layer", "params", "model"}``: queue an
  explanation on ``model`` (0: ``A``, 1: ``B``); ``target`` is a class index or name of that
  model; ``GET /api/jobs/{id}``: its status and progress; ``DELETE /api/jobs/{id}``: cancel it.
- ``GET /api/results/{key}``: a finished map's facts and colour scale; ``GET
  /api/results/{key}.png?scale_with=k1,k2``: the map as RGBA (alpha = strength), on one colour
  scale shared with the maps ``scale_with`` (maps compared side by side: two targets or two models).

A bad request is a 4xx with ``{"detail": message}``; an unexpected error is a 500 with the same
shape, and the server goes on.
"""

from __future__ import annotations

import io
import logging
from importlib import resources
from typing import Any

from fastapi import FastAPI, File, HTTPException, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from cnnlens.errors import CnnlensError
from cnnlens.serve.explorer import LABELS, Explorer, StoredImage, scale_info

log = logging.getLogger(__name__)


class Pick(BaseModel):
    name: str


class JobRequest(BaseModel):
    image: str
    method: str
    target: int | str | None = None
    layer: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    model: int = 0


def _image_body(stored: StoredImage) -> dict[str, Any]:
    tops = [[{"index": i, "name": n, "probability": round(p, 6)} for i, n, p in top] for top in stored.tops]
    return {
        "id": stored.id,
        "name": stored.name,
        "size": list(stored.image.size),
        "top": tops[0],
        "tops": [{"model": m, "label": LABELS[m], "top": top} for m, top in enumerate(tops)],
    }


def _png(image: Any) -> Response:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return Response(buf.getvalue(), media_type="image/png", headers={"Cache-Control": "no-store"})


def create_app(explorer: Explorer) -> FastAPI:
    """The explorer's app (``uvicorn.run(create_app(explorer))``; ``TestClient`` in tests)."""
    app = FastAPI(title="cnnlens explorer", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.explorer = explorer
    page = resources.files("cnnlens.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.exception_handler(CnnlensError)
    async def bad_input(request: Request, err: CnnlensError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=400)

    @app.exception_handler(KeyError)
    async def not_found(request: Request, err: KeyError) -> JSONResponse:
        return JSONResponse({"detail": str(err.args[0]) if err.args else "not found"}, status_code=404)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception) -> JSONResponse:
        log.exception("request %s failed", request.url.path)
        return JSONResponse({"detail": f"internal error: {type(err).__name__}: {err}"}, status_code=500)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page

    @app.get("/api/info")
    async def info() -> dict[str, Any]:
        return explorer.info()

    @app.post("/api/images")
    async def upload(file: UploadFile = File(...)) -> dict[str, Any]:  # noqa: B008 - FastAPI's idiom
        data = await file.read(explorer.limits.max_bytes + 1)
        if len(data) > explorer.limits.max_bytes:
            limit = explorer.limits.max_bytes / 2**20
            raise HTTPException(413, f"{file.filename}: the file is larger than the limit of {limit:.0f} MB")
        stored = await run_in_threadpool(explorer.add_upload, data, file.filename or "upload")
        return _image_body(stored)

    @app.post("/api/images/pick")
    async def pick(body: Pick) -> dict[str, Any]:
        return _image_body(await run_in_threadpool(explorer.add_data_image, body.name))

    @app.get("/api/images/{image_id}/view.png")
    async def view(image_id: str, model: int = 0) -> Response:
        return _png(await run_in_threadpool(explorer.view, image_id, 384, model))

    @app.post("/api/jobs")
    async def submit(body: JobRequest) -> dict[str, Any]:
        job = await run_in_threadpool(
            explorer.submit, body.image, body.method, body.target, body.layer, body.params, body.model
        )
        return job.info()

    @app.get("/api/jobs/{job_id}")
    async def job(job_id: str) -> dict[str, Any]:
        return explorer.job(job_id).info()

    @app.delete("/api/jobs/{job_id}")
    async def cancel(job_id: str) -> dict[str, Any]:
        return explorer.cancel(job_id).info()

    @app.get("/api/results/{key}.png")
    async def heat(key: str, scale_with: str = "") -> Response:
        others = [k for k in scale_with.split(",") if k]
        return _png(await run_in_threadpool(explorer.heat, key, others))

    @app.get("/api/results/{key}")
    async def result(key: str, scale_with: str = "") -> dict[str, Any]:
        others = [k for k in scale_with.split(",") if k]
        body = explorer.result(key).info()
        body["scale"] = scale_info(explorer.scale([key, *others]))
        return body

    return app
