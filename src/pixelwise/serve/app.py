"""The FastAPI application: /predict, /predict/batch, /model, /health, the page at / and the docs at /docs.

Every error is JSON ``{"detail": "one message"}`` with a 4xx/5xx status, and no request can stop the server:
bodies are bounded (``BodyLimit``), model calls queue with a bound and a timeout (``InferenceQueue``), and
decoding is pixelwise's own, so the same broken file gets the same message here as in ``pixelwise predict``.
"""

from __future__ import annotations

import logging
import secrets
from collections import deque
from collections.abc import Iterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles

from pixelwise import __version__
from pixelwise.errors import PixelwiseError
from pixelwise.inference.predictor import AUTO_TILE_AREA
from pixelwise.serve import encode
from pixelwise.serve.guard import BodyLimit, InferenceQueue, ServeError
from pixelwise.serve.options import BatchOptions, PredictOptions, check_tile, check_work, predict_one
from pixelwise.serve.settings import ServedModel, ServeSettings, load_model
from pixelwise.serve.uploads import BATCH_FIELD, FIELD, decode, read_upload, read_uploads

log = logging.getLogger("pixelwise.serve")
KEY_HEADER = "X-API-Key"

_IMAGE_BODY = {"schema": {"type": "string", "format": "binary"}}
PREDICT_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": [FIELD],
                                       "properties": {FIELD: {"type": "string", "format": "binary"}}}},
    "image/*": _IMAGE_BODY, "application/octet-stream": _IMAGE_BODY}}}
BATCH_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": [BATCH_FIELD],
    "properties": {BATCH_FIELD: {"type": "array", "items": {"type": "string", "format": "binary"}}}}}}}}
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "broken or empty image, bad form"}, 401: {"description": "API key missing or wrong"},
    408: {"description": "the body arrived too slowly"}, 413: {"description": "body or image over the limits"},
    415: {"description": "not an image"}, 422: {"description": "bad query option"},
    503: {"description": "queue full: retry"}, 504: {"description": "not answered within --timeout"}}
PREDICT_ANSWERS: dict[int | str, dict[str, Any]] = {200: {"content": {
    "image/png": {}, "application/json": {}, "application/x-npz": {}},
    "description": "output=mask (default): palette PNG whose pixel values are class indices; overlay: PNG; "
                   "json: class areas and shapes; probs: .npz with float16 probabilities (K, H, W)"}, **ERRORS}


def _json_error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    """FastAPI's list of problems as one line naming each option, as config errors name their key."""
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ())[1:]) or "request"
        got = f" (got {err['input']!r})" if err.get("type") != "missing" and "input" in err else ""
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        problems.append(f"query option '{where}': {message}{got}")
    return "; ".join(problems)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServeError)
    async def _serve_error(_: Request, exc: ServeError) -> JSONResponse:
        return _json_error(exc.status, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _json_error(422, _validation_message(exc))

    @app.exception_handler(PixelwiseError)
    async def _user_error(_: Request, exc: PixelwiseError) -> JSONResponse:
        return _json_error(400, str(exc))

    @app.exception_handler(MemoryError)
    async def _memory(_: Request, exc: MemoryError) -> JSONResponse:
        return _json_error(503, "the server ran out of memory for this image; send a smaller image or ask for tiles "
                                "(?tile=512)")

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error while answering a request")
        return _json_error(500, f"internal error ({type(exc).__name__}: {exc}); the server goes on serving, "
                                "and the log has the details")


def _key_check(api_key: str | None) -> list[Any]:
    """The dependency that demands the API key, or none when the server has no key."""
    if not api_key:
        return []
    header = APIKeyHeader(name=KEY_HEADER, auto_error=False,
                          description="The server's API key (--api-key or PIXELWISE_API_KEY)")

    async def require_key(key: str | None = Security(header)) -> None:  # a default: the header is a local
        if not key:
            raise ServeError(401, f"this server requires an API key: send it in the {KEY_HEADER} header")
        if not secrets.compare_digest(key.encode(), api_key.encode()):
            raise ServeError(401, f"the API key in {KEY_HEADER} is not this server's key")

    return [Security(require_key)]


def model_facts(served: ServedModel, settings: ServeSettings) -> dict[str, Any]:
    """What GET /model answers: classes, input contract, training metrics, the server's limits."""
    seg, table = served.segmenter, served.segmenter.table
    ch, cw = seg.crop_size
    return {
        "source": served.source.name, "backend": served.backend, "version": __version__,
        "classes": [{"index": i, "name": n, "color": list(c)}
                    for i, (n, c) in enumerate(zip(table.names, table.palette, strict=True))],
        "input": {"channels": seg.channels, "dtype": seg.spec.dtype or "uint8", "any_size": True,
                  "converted": "8-bit grey, RGBA, palette and CMYK to the model's channels; EXIF/TIFF orientation "
                               "applied; other pixel types than dtype are refused (422), never rescaled",
                  "max_image_pixels": served.max_pixels, "max_upload_bytes": settings.max_upload_bytes,
                  "crop_size": [ch, cw], "tiled_above_pixels": AUTO_TILE_AREA * ch * cw},
        "output": {"mask": "PNG, pixel value = class index (palette: the class colours)"},
        "metrics": served.metrics,
        "limits": {"queue": settings.queue, "timeout_seconds": settings.timeout, "max_batch": settings.max_batch},
    }


def _routes(served: ServedModel, settings: ServeSettings, queue: InferenceQueue) -> APIRouter:
    router = APIRouter(dependencies=_key_check(settings.api_key), responses=ERRORS)
    seg = served.segmenter

    @router.get("/health", summary="Liveness and the queue's state")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "backend": served.backend, "queue": queue.stats()}

    @router.get("/model", summary="Classes, colours, input contract, training metrics, limits")
    async def model() -> dict[str, Any]:
        return model_facts(served, settings)

    @router.post("/predict", summary="Segment one image", openapi_extra=PREDICT_BODY, responses=PREDICT_ANSWERS,
                 response_class=Response)
    async def predict(request: Request, options: Annotated[PredictOptions, Query()]) -> Response:
        check_tile(seg, options)
        async with queue.place() as run:
            data, name = await read_upload(request)
            body, media, filename = await run(predict_one, served, data, name, options)
        return Response(body, media_type=media, headers={"Content-Disposition": f'inline; filename="{filename}"'})

    @router.post("/predict/batch", summary="Segment several images: JSON per image, or its error",
                 openapi_extra=BATCH_BODY)
    async def predict_batch(request: Request, options: Annotated[BatchOptions, Query()]) -> dict[str, Any]:
        check_tile(seg, options)
        async with queue.place() as run:
            files = await read_uploads(request, settings.max_batch)
            return {"results": await run(_batch, files, options)}

    def _batch(files: list[tuple[bytes, str]], options: BatchOptions) -> list[dict[str, Any]]:
        # Each image is decoded when the model is ready for it and dropped once its mask is encoded: a batch holds
        # a few decoded images at a time, never all of them. Up to four are predicted together, but only images
        # small enough not to be tiled automatically; with tile=0 (any size whole) one at a time.
        results: list[dict[str, Any]] = [{"file": name} for _, name in files]
        waiting: deque[int] = deque()  # the decoded images handed to the model whose masks have not come back

        def images() -> Iterator[Any]:
            for i, (data, name) in enumerate(files):
                try:
                    image = decode(data, name, seg.spec, served.max_pixels)
                    check_work(seg, image.shape, options, name)
                except ServeError as e:
                    results[i].update(status=e.status, detail=e.message)
                    continue
                waiting.append(i)
                yield image

        masks = seg.predict(images(), tile=options.tile, overlap=options.overlap, tta=options.tta,
                            scales=options.scale_list, batch_size=1 if options.tile == 0 else 4)  # an iterator
        for mask in masks:
            i = waiting.popleft()
            name = results[i]["file"]
            results[i] = encode.mask_json(seg, mask, options.shapes, options.tolerance, options.mask, name)
        return results

    return router


def _description(served: ServedModel, settings: ServeSettings) -> str:
    """The docs' introduction; with a key it names no model, since /docs and /openapi.json are open to all."""
    if settings.api_key:
        return f"Semantic segmentation; send the key in the {KEY_HEADER} header (Authorize). The page is at /."
    return (f"Semantic segmentation with {served.source.name} ({served.backend}, "
            f"{served.segmenter.table.num_classes} classes). The page is at /.")


def create_app(settings: ServeSettings, served: ServedModel | None = None) -> FastAPI:
    """The application for ``settings`` (the model is loaded here unless given)."""
    served = served or load_model(settings)
    queue = InferenceQueue(settings.queue, settings.timeout)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        yield
        queue.close()

    app = FastAPI(title="pixelwise", version=__version__, lifespan=lifespan,
                  description=_description(served, settings))
    app.state.queue, app.state.served = queue, served
    _add_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes, timeout=settings.timeout)
    if settings.cors_origins:  # added last, so it wraps everything: refusals carry CORS headers too
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=[KEY_HEADER, "Content-Type", "X-Filename"])
    app.include_router(_routes(served, settings, queue))
    static = resources.files("pixelwise.serve") / "static"
    # The page and its script hold no data, so they need no key: the page asks for it when the API does.
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse((static / "index.html").read_text(encoding="utf-8"))

    return app
