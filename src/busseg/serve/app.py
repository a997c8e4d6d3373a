"""FastAPI app: a single-page demo at `/`, `POST /v1/segment`, `/healthz`, `/openapi.json`."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from busseg import __version__
from busseg.checkpoint import load_model
from busseg.errors import InvalidInput
from busseg.imageio import (
    DEFAULT_MAX_PIXELS,
    ImageReadError,
    ImageTooLarge,
    header_pixels,
    mask_image,
    prob_image,
    read_upload,
)
from busseg.inference import Forward, make_forward, predict_maps, torch_forward
from busseg.postprocess import PostprocessSettings, chosen_settings, decide
from busseg.predict import gray_image, lesion_stats, overlay_image
from busseg.preprocess import to_gray01
from busseg.serve.protocol import DEFAULT_READ_TIMEOUT_S, uvicorn_config

log = logging.getLogger("busseg.serve")
STATIC = Path(__file__).parent / "static"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' blob: data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


LARGE_PIXELS = 4_000_000  # uploads above this share at most concurrency - 1 inference slots


@dataclass
class ServeConfig:
    """Limits of the service."""

    checkpoint: str | None = None
    max_upload_bytes: int = 20 * 2**20
    max_pixels: int = DEFAULT_MAX_PIXELS
    concurrency: int = 2
    queue: int = 16
    timeout_s: float = 30.0
    docs: bool = False
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    onnx: str | None = None  # an exported model run with ONNX Runtime instead of PyTorch
    threads: int = 0  # threads per inference; 0: the usable cores shared among the slots


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
    lesion_score: float  # the presence head's probability, or the map's peak without a head
    lesion_area_mm2: float | None
    warning: str | None = None  # why no lesion was looked for (an image with no contrast)


class ErrorBody(BaseModel):
    detail: str


def _png(img: Image.Image) -> Response:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return Response(buf.getvalue(), media_type="image/png")


class _BadBody(Exception):
    pass


class BodyLimit:
    """ASGI middleware: 413 as soon as a declared or streamed request body passes `limit`
    bytes, before the rest is received or spooled to disk; 408 when the body has not arrived
    `read_timeout` seconds after the headers (a slow or stalled sender)."""

    def __init__(self, app, limit: int, read_timeout: float = DEFAULT_READ_TIMEOUT_S) -> None:
        self.app, self.limit, self.read_timeout = app, limit, read_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            return await self._reject(send, 413, f"upload over the {self.limit}-byte limit")
        state = {"seen": 0, "failed": None, "started": False, "done": False}
        deadline = asyncio.get_running_loop().time() + self.read_timeout

        async def limited_receive():
            if state["done"]:
                return await receive()
            try:
                message = await asyncio.wait_for(
                    receive(), max(0.0, deadline - asyncio.get_running_loop().time()))
            except asyncio.TimeoutError:  # TimeoutError from Python 3.11 on
                state["failed"] = (408, f"request body not received within "
                                        f"{self.read_timeout:.0f} s")
                raise _BadBody from None
            if message["type"] == "http.request":
                state["seen"] += len(message.get("body", b""))
                state["done"] = not message.get("more_body", False)
                if state["seen"] > self.limit:
                    state["failed"] = (413, f"upload over the {self.limit}-byte limit")
                    raise _BadBody
            return message

        async def guarded_send(message):
            if state["failed"]:  # whatever the app answers to the cut body, the answer is ours
                if message["type"] == "http.response.start" and not state["started"]:
                    state["started"] = True
                    await self._reject(send, *state["failed"])
                return
            state["started"] = state["started"] or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BadBody:
            if not state["started"]:
                await self._reject(send, *state["failed"])

    async def _reject(self, send, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        headers = [(b"content-type", b"application/json"), (b"connection", b"close"),
                   *((k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _one_of(query, form):
    """A parameter given as a query parameter or a form field (`check_repeats` has already
    refused one given both ways with different values)."""
    return query if query is not None else form


PARAMETERS = ("threshold", "output", "plain")


async def check_repeats(request: Request) -> None:
    """422 for a parameter given more than once with different values (in the query, the
    form or both), an empty value, or more than one file part."""
    form = await request.form()  # parsed once: FastAPI reuses it for the parameters
    if len(form.getlist("file")) > 1:
        raise HTTPException(422, "give one file part per request "
                                 f"(got {len(form.getlist('file'))})")
    for name in PARAMETERS:
        values = request.query_params.getlist(name) + [
            v for v in form.getlist(name) if isinstance(v, str)]
        if any(v.strip() == "" for v in values):
            raise HTTPException(422, f"{name} is given with an empty value")
        if len(set(values)) > 1:
            shown = ", ".join(sorted(set(values))[:4])
            raise HTTPException(422, f"{name} given twice or more with different values "
                                     f"({shown})")


@dataclass
class ServedModel:
    """What the service runs: a forward function, its input size, settings and name."""

    forward: Forward
    size: int
    settings: PostprocessSettings
    name: str


def slot_threads(cfg: ServeConfig) -> int:
    """Threads each inference runs on: `cfg.threads`, or the usable cores divided among the
    `cfg.concurrency` slots (at least one), so that concurrent inferences do not oversubscribe
    the CPU."""
    if cfg.threads < 0 or cfg.concurrency < 1:
        raise InvalidInput(f"threads must be >= 0 and concurrency >= 1 (got {cfg.threads}, "
                           f"{cfg.concurrency})")
    if cfg.threads:
        return cfg.threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // cfg.concurrency)


def use_slot_threads(cfg: ServeConfig) -> int:
    """Set PyTorch's (process-wide) thread count to `slot_threads(cfg)`; for the process that
    serves (ONNX Runtime sessions get theirs in `load_served`)."""
    import torch

    n = slot_threads(cfg)
    torch.set_num_threads(n)
    return n


def load_served(cfg: ServeConfig) -> ServedModel:
    """The configured model: an exported ONNX file (`cfg.onnx`) or PyTorch weights."""
    if cfg.onnx and cfg.checkpoint:
        raise InvalidInput("give a checkpoint or an ONNX file to serve, not both")
    if cfg.onnx:
        forward, size, settings = make_forward(None, "onnx", cfg.onnx,
                                               threads=slot_threads(cfg))
        if settings is None:
            raise InvalidInput(f"{cfg.onnx}: the file carries no busseg settings; export it "
                               "with busseg export")
        return ServedModel(forward, size, settings, Path(cfg.onnx).stem)
    loaded = load_model(cfg.checkpoint)
    return ServedModel(torch_forward(loaded), loaded.size, loaded.settings, loaded.name)


class Segmenter:
    """Uploaded bytes -> the answer of /v1/segment: JSON statistics or one of the PNGs."""

    def __init__(self, model: ServedModel, max_pixels: int) -> None:
        self.model, self.max_pixels = model, max_pixels

    def __call__(self, data: bytes, name: str, threshold: float | None, output: Output,
                 plain: bool = False):
        try:
            scan = read_upload(data, name, frames="first", max_pixels=self.max_pixels)[0]
            gray = to_gray01(scan.pixels)
            spacing, shape = scan.pixel_spacing_mm, scan.shape
            del scan  # the decoded pixels are not needed any more: keep peak memory low
        except ImageTooLarge as exc:
            raise HTTPException(413, f"{name}: {exc.reason}") from None
        except ImageReadError as exc:
            raise HTTPException(422, f"{name}: {exc.reason}") from None
        except Exception as exc:  # noqa: BLE001 - whatever the bytes do, they are the upload's
            raise HTTPException(422, f"{name}: cannot read the scan ({exc or type(exc).__name__})"
                                ) from None
        if output is Output.scan:  # the scan as the server read it: no model run needed
            return _png(gray_image(gray, shape))
        settings = chosen_settings(self.model.settings, plain, threshold)
        pred = predict_maps(self.model.forward, [gray], self.model.size, settings.tta,
                            shapes=[shape])[0]
        prob, mask = pred.prob, decide(pred.prob, pred.score, settings)
        if output is Output.mask:
            return _png(mask_image(mask))
        if output is Output.overlay:
            return _png(overlay_image(gray, mask))
        if output is Output.prob:
            return _png(prob_image(prob))
        return SegmentResult(model=self.model.name, version=__version__,
                             threshold=settings.threshold, lesion_score=pred.score,
                             warning=pred.warning, **lesion_stats(mask, prob, spacing))


async def _read_upload(request: Request, file: UploadFile, limit: int) -> tuple[bytes, str]:
    """The upload's bytes (413 past `limit`, 400 when empty) and its bare file name."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise HTTPException(413, f"upload over the {limit}-byte limit")
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"upload over the {limit}-byte limit")
    if not data:
        raise HTTPException(400, "empty upload")
    return data, Path(file.filename or "upload").name


class Slots:
    """At most `concurrency` inferences at once (pictures over LARGE_PIXELS by their header at
    most concurrency - 1, so ordinary scans keep one), at most `queue` more waiting (then
    503), each within `timeout_s` (then 503)."""

    def __init__(self, cfg: ServeConfig, run_model: Segmenter) -> None:
        self.cfg, self.run_model, self.waiting = cfg, run_model, 0
        self.gate = asyncio.Semaphore(cfg.concurrency)
        self.large_gate = asyncio.Semaphore(max(1, cfg.concurrency - 1))

    async def run(self, data: bytes, name: str, *args):
        cfg = self.cfg
        if self.waiting >= cfg.queue + cfg.concurrency:
            raise HTTPException(503, "busy: too many requests waiting; retry shortly")
        self.waiting += 1
        try:
            big = header_pixels(data) > LARGE_PIXELS
            async with self.large_gate if big else contextlib.nullcontext(), self.gate:
                return await asyncio.wait_for(
                    run_in_threadpool(self.run_model, data, name, *args), cfg.timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(503, f"{name}: took longer than {cfg.timeout_s:.0f} s") from None
        finally:
            self.waiting -= 1


def create_app(config: ServeConfig | None = None) -> FastAPI:
    """Build the app; the model is loaded once, here."""
    cfg = config or ServeConfig()
    model = load_served(cfg)
    threads = slot_threads(cfg)
    slots = Slots(cfg, Segmenter(model, cfg.max_pixels))
    app = FastAPI(title="busseg", version=__version__,
                  description="Breast-ultrasound lesion segmentation (research use only).",
                  docs_url="/docs" if cfg.docs else None,
                  redoc_url="/redoc" if cfg.docs else None)
    errors = {400: {"model": ErrorBody}, 413: {"model": ErrorBody},
              415: {"model": ErrorBody}, 422: {"model": ErrorBody},
              503: {"model": ErrorBody}}

    _install_guards(app, cfg)
    page = (STATIC / "index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "model": model.name, "version": __version__,
                "backend": "onnx" if cfg.onnx else "torch", "threads": threads,
                "threshold": model.settings.threshold, "postprocess": model.settings.to_dict()}

    @app.post("/v1/segment", response_model=SegmentResult, responses={
        **errors, 200: {"content": {"image/png": {}}, "description": "JSON, or a PNG"}})
    async def segment(
        request: Request,
        file: Annotated[UploadFile, File(
            description="PNG, JPEG, BMP, TIFF, GIF, WebP or DICOM scan")],
        threshold: Annotated[float | None, Query(
            ge=0.0, le=1.0, description="probability threshold (model's default); "
            "also accepted as a form field")] = None,
        output: Annotated[Output | None, Query(
            description="json (default), or a mask/overlay/prob/scan PNG; also accepted as "
            "a form field")] = None,
        plain: Annotated[bool | None, Query(
            description="true: the plain output (threshold 0.5, no TTA, no presence rule or "
            "filter) instead of the model's setting; also accepted as a form field")] = None,
        threshold_form: Annotated[float | None, Form(
            alias="threshold", ge=0.0, le=1.0, description="as the query parameter")] = None,
        plain_form: Annotated[bool | None, Form(
            alias="plain", description="as the query parameter")] = None,
        output_form: Annotated[Output | None, Form(
            alias="output", description="as the query parameter")] = None,
    ):
        await check_repeats(request)
        threshold = _one_of(threshold, threshold_form)
        output = _one_of(output, output_form) or Output.json
        plain = bool(_one_of(plain, plain_form))
        data, name = await _read_upload(request, file, cfg.max_upload_bytes)
        return await slots.run(data, name, threshold, output, plain)

    return app


def _install_guards(app: FastAPI, cfg: ServeConfig) -> None:
    """Upload size and read deadlines, security headers on every response, JSON errors (503
    with Retry-After)."""
    app.state.read_timeout_s = cfg.read_timeout_s  # the headers' deadline (serve.protocol)
    app.add_middleware(BodyLimit, limit=cfg.max_upload_bytes + 64 * 1024,  # + multipart framing
                       read_timeout=cfg.read_timeout_s)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        headers = {"Retry-After": "1"} if exc.status_code == 503 else {}
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code,
                            headers={**headers, **SECURITY_HEADERS})

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": [_without_input(e) for e in exc.errors()]},
                            status_code=422, headers=SECURITY_HEADERS)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed: %s", request.method, request.url.path, exc, exc_info=exc)
        return JSONResponse({"detail": "internal error; the server log has the details"},
                            status_code=500, headers=SECURITY_HEADERS)


def _without_input(error: dict) -> dict:
    """A validation error as FastAPI gives it, less the offending input (an upload's bytes
    never go back to the client) and context objects that are not JSON."""
    keep = ("type", "loc", "msg")
    return {k: (list(v) if k == "loc" else str(v) if k == "msg" else v)
            for k, v in error.items() if k in keep}


def serve(host: str = "127.0.0.1", port: int = 8000, config: ServeConfig | None = None,
          max_connections: int = 256) -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    use_slot_threads(config or ServeConfig())
    uvicorn.Server(uvicorn_config(create_app(config), host, port, log_level="info",
                                  limit_concurrency=max_connections)).run()
