"""FastAPI app: a single-page demo at `/`, `POST /v1/segment`, `/healthz`, `/openapi.json`."""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from busseg import __version__
from busseg.checkpoint import load_model
from busseg.imageio import ImageReadError, read_upload
from busseg.inference import predict_maps, torch_forward
from busseg.postprocess import decide
from busseg.predict import lesion_stats, overlay_image
from busseg.preprocess import to_gray01

STATIC = Path(__file__).parent / "static"


@dataclass
class ServeConfig:
    """Limits of the service."""

    checkpoint: str | None = None
    max_upload_bytes: int = 20 * 2**20
    max_pixels: int = 40_000_000
    concurrency: int = 2


class Output(str, Enum):
    json = "json"
    mask = "mask"
    overlay = "overlay"
    prob = "prob"
    scan = "scan"


class SegmentResult(BaseModel):
    """Lesion statistics of one segmented scan."""

    model: str
    version: str
    width: int
    height: int
    threshold: float
    lesion_area_px: int
    lesion_fraction: float
    bbox_xyxy: list[int] | None
    n_lesions: int
    mean_prob: float | None
    lesion_area_mm2: float | None


class ErrorBody(BaseModel):
    detail: str


def _png(img: Image.Image) -> Response:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return Response(buf.getvalue(), media_type="image/png")


def _one_of(name: str, query, form):
    """A parameter given as a query parameter or a form field; both and different: 422."""
    if query is not None and form is not None and query != form:
        raise HTTPException(422, f"{name} given twice with different values "
                                 f"(query {query}, form {form})")
    return query if query is not None else form


def create_app(config: ServeConfig | None = None) -> FastAPI:
    """Build the app; the model is loaded once, here."""
    cfg = config or ServeConfig()
    loaded = load_model(cfg.checkpoint)
    forward = torch_forward(loaded)
    gate = asyncio.Semaphore(cfg.concurrency)
    app = FastAPI(title="busseg", version=__version__,
                  description="Breast-ultrasound lesion segmentation (research use only).")
    errors = {400: {"model": ErrorBody}, 413: {"model": ErrorBody},
              415: {"model": ErrorBody}, 422: {"model": ErrorBody}}

    page = (STATIC / "index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "model": loaded.name, "version": __version__,
                "threshold": loaded.settings.threshold, "postprocess": loaded.settings.to_dict()}

    def run_model(data: bytes, name: str, threshold: float | None, output: Output):
        try:
            scan = read_upload(data, name, frames="first", max_pixels=cfg.max_pixels)[0]
            gray = to_gray01(scan.pixels)
        except ImageReadError as exc:
            code = 413 if "limit" in exc.reason or "too large" in exc.reason else 422
            raise HTTPException(code, f"{name}: {exc.reason}") from None
        except ValueError as exc:
            raise HTTPException(422, f"{name}: {exc}") from None
        settings = loaded.settings.replace(threshold=threshold)
        pred = predict_maps(forward, [gray], loaded.size, settings.tta)[0]
        prob, mask = pred.prob, decide(pred.prob, pred.score, settings)
        if output is Output.mask:
            return _png(Image.fromarray(mask.astype(np.uint8) * 255))
        if output is Output.overlay:
            return _png(overlay_image(gray, mask))
        if output is Output.scan:
            return _png(Image.fromarray((gray * 255 + 0.5).astype(np.uint8)))
        if output is Output.prob:
            return _png(Image.fromarray((prob * 255 + 0.5).astype(np.uint8)))
        stats = lesion_stats(mask, prob, scan.pixel_spacing_mm)
        thr = loaded.threshold if threshold is None else threshold
        return SegmentResult(model=loaded.name, version=__version__, threshold=thr, **stats)

    @app.post("/v1/segment", response_model=SegmentResult, responses={
        **errors, 200: {"content": {"image/png": {}}, "description": "JSON, or a PNG"}})
    async def segment(
        request: Request,
        file: Annotated[UploadFile, File(description="PNG, JPEG, BMP, TIFF or DICOM scan")],
        threshold: Annotated[float | None, Query(
            ge=0.0, le=1.0, description="probability threshold (model's default); "
            "also accepted as a form field")] = None,
        output: Annotated[Output | None, Query(
            description="json (default), or a mask/overlay/prob/scan PNG; also accepted as "
            "a form field")] = None,
        threshold_form: Annotated[float | None, Form(
            alias="threshold", ge=0.0, le=1.0, description="as the query parameter")] = None,
        output_form: Annotated[Output | None, Form(
            alias="output", description="as the query parameter")] = None,
    ):
        threshold = _one_of("threshold", threshold, threshold_form)
        output = _one_of("output", output, output_form) or Output.json
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cfg.max_upload_bytes + 64 * 1024:
            raise HTTPException(413, f"upload over the {cfg.max_upload_bytes}-byte limit")
        data = await file.read(cfg.max_upload_bytes + 1)
        if len(data) > cfg.max_upload_bytes:
            raise HTTPException(413, f"upload over the {cfg.max_upload_bytes}-byte limit")
        if not data:
            raise HTTPException(400, "empty upload")
        name = Path(file.filename or "upload").name
        async with gate:  # bounded concurrency: at most `concurrency` inferences at once
            return await run_in_threadpool(run_model, data, name, threshold, output)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    return app


def serve(host: str = "127.0.0.1", port: int = 8000, config: ServeConfig | None = None) -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(config), host=host, port=port, log_level="info")
