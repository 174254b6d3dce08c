"""The explorer's web layer: a FastAPI app over an :class:`~cnnlens.serve.explorer.Explorer` and one
page (``static/index.html``, plain HTML and JavaScript, no build step).

API (JSON unless said otherwise):

- ``GET /api/info``: model, classes, methods, layers, the images of ``--data``, upload limits.
- ``POST /api/images`` (multipart ``file``): upload an image; ``POST /api/images/pick``
  ``{"name"}``: take one of ``--data``. Both answer ``{"id", "name", "top"}`` (the top-5).
- ``GET /api/images/{id}/view.png``: the part of the image the model sees.
- ``POST /api/jobs`` ``{"image", "method", "target", "layer", "params"}``: queue an explanation;
  ``GET /api/jobs/{id}``: its status and progress; ``DELETE /api/jobs/{id}``: cancel it.
- ``GET /api/results/{key}``: a finished map's facts and colour scale; ``GET
  /api/results/{key}.png?scale_with=k1,k2``: the map as RGBA (alpha = strength), on one colour
  scale shared with the maps ``scale_with`` (maps compared side by side).

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
from cnnlens.serve.explorer import Explorer, StoredImage, scale_info

log = logging.getLogger(__name__)


class Pick(BaseModel):
    name: str


class JobRequest(BaseModel):
    image: str
    method: str
    target: int | None = None
    layer: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)


def _image_body(stored: StoredImage) -> dict[str, Any]:
    return {
        "id": stored.id,
        "name": stored.name,
        "size": list(stored.image.size),
        "top": [{"index": i, "name": n, "probability": round(p, 6)} for i, n, p in stored.top],
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
    async def view(image_id: str) -> Response:
        return _png(await run_in_threadpool(explorer.view, image_id))

    @app.post("/api/jobs")
    async def submit(body: JobRequest) -> dict[str, Any]:
        job = await run_in_threadpool(
            explorer.submit, body.image, body.method, body.target, body.layer, body.params
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
