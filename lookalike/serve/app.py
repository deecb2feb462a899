"""The search service: a FastAPI app over a ``SearchIndex`` (``create_app``), JSON in and out.

Every error is a 4xx JSON ``{"error": "<what, and how to fix>"}`` (an unexpected failure is logged and answered
with a JSON 500, never a traceback). Upload endpoints read their multipart body on the event loop (without
blocking) and run the work in the threadpool; the other endpoints are plain ``def`` (threadpool too). Images are
embedded through one ``MicroBatcher``, so concurrent requests share model calls. Searches never take a lock (the
index swaps its state copy-on-write); adds and removes are serialised by one lock, since the index allows one
writer at a time, and are durable when they are acknowledged.
"""

from __future__ import annotations

import hmac
import logging
import math
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from lookalike.errors import ArgumentError, LookalikeError
from lookalike.serve.batching import MicroBatcher
from lookalike.serve.uploads import ApiError, BodyLimitMiddleware, decode_image

__all__ = ["create_app", "MAX_TOP_K", "DEFAULT_MAX_PIXELS", "DEFAULT_MAX_TEXT_CHARS"]

log = logging.getLogger("lookalike.serve")

MAX_TOP_K = 1000
DEFAULT_MAX_PIXELS = 40_000_000  # 40 megapixels: any camera photo; a decompression bomb is refused from its header
_FORM_SLACK = 64 * 1024  # multipart boundaries, part headers and the small form fields around the file
DEFAULT_MAX_TEXT_CHARS = 2000  # a query or added text; the model reads at most its max_length tokens anyway
_RESERVED_FIELDS = ("file", "id", "path", "top_k", "text")
_PAGE = Path(__file__).with_name("page.html")


def create_app(index: Any, *, token: str | None = None, max_upload_mb: float = 10.0,
               max_pixels: int = DEFAULT_MAX_PIXELS, batch_wait_ms: float = 5.0, max_batch: int = 32,
               upload_dir: str | Path | None = None, max_text_chars: int = DEFAULT_MAX_TEXT_CHARS) -> FastAPI:
    """The service over ``index`` (a ``lookalike.index.SearchIndex``). ``token``: when set, POST/DELETE need
    ``Authorization: Bearer <token>``. ``max_batch=1`` turns micro-batching off (each request calls the model
    itself: the benchmark's naive baseline). Uploaded items are stored under ``upload_dir`` (default: the index
    folder's ``uploads/``) with generated names. An index of texts (``index.holds_texts``) is searched and
    extended with a ``text`` field (JSON or form) of at most ``max_text_chars`` characters instead of a file."""
    if max_upload_mb <= 0 or max_pixels <= 0 or max_text_chars <= 0:
        raise ArgumentError("max_upload_mb, max_pixels and max_text_chars must be positive")
    max_upload = int(max_upload_mb * 2**20)
    service = _Service(index, token=token or None, max_upload=max_upload, max_pixels=int(max_pixels),
                       batch_wait_ms=batch_wait_ms, max_batch=max_batch, upload_dir=upload_dir,
                       max_text_chars=int(max_text_chars))
    app = FastAPI(title="lookalike", summary="Search an image index by example.", docs_url=None, redoc_url=None,
                  lifespan=service.lifespan)
    app.state.service = service
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_upload + _FORM_SLACK, shown_limit=max_upload)
    _add_error_handlers(app)
    _add_routes(app, service)
    return app


class _Service:
    """What the routes share: the index, the batcher, the write lock and the limits."""

    def __init__(self, index: Any, *, token: str | None, max_upload: int, max_pixels: int, batch_wait_ms: float,
                 max_batch: int, upload_dir: str | Path | None, max_text_chars: int = DEFAULT_MAX_TEXT_CHARS) -> None:
        self.index = index
        self.holds_texts = bool(getattr(index, "holds_texts", False))
        self.max_text_chars = max_text_chars
        self.token = token
        self.max_upload = max_upload
        self.max_pixels = max_pixels
        self.write_lock = threading.Lock()
        self.batch_wait_ms = float(batch_wait_ms)
        self.batcher = (MicroBatcher(self._embed_batch, max_batch=max_batch, max_wait_ms=batch_wait_ms)
                        if max_batch > 1 else None)
        folder = getattr(index, "folder", None)
        if upload_dir is None and folder is None:
            raise ArgumentError("the index has no folder: pass upload_dir= to store uploaded images")
        self.upload_dir = Path(upload_dir) if upload_dir is not None else Path(folder) / "uploads"
        self.model_calls = 0
        self._calls_lock = threading.Lock()

    async def lifespan(self, app: FastAPI):
        yield
        if self.batcher is not None:
            self.batcher.close()

    # -- embedding -----------------------------------------------------------------------------------------
    def _embed_batch(self, items: list) -> np.ndarray:
        with self._calls_lock:
            self.model_calls += 1
        embedder = self.index.embedder
        return embedder.embed_texts(items) if self.holds_texts else embedder.embed_images(items)

    def embed(self, image) -> np.ndarray:
        """One image (or text, for an index of texts) -> its embedding (1, dim), through the batcher when
        batching is on."""
        if self.batcher is None:
            return self._embed_batch([image])
        return np.asarray(self.batcher.submit(image))[None, :]

    # -- results -------------------------------------------------------------------------------------------
    def top_k(self, top_k: int) -> int:
        return max(1, min(int(top_k), len(self.index)))

    def result(self, hit: Any) -> dict:
        row = {key: _json_value(value) for key, value in dict(hit.row or {}).items()}
        row.pop("id", None)
        if self.holds_texts:
            return {"id": str(hit.id), "distance": float(hit.distance), "text": row.pop("text", None),
                    "image": None, **row}
        return {"id": str(hit.id), "distance": float(hit.distance), "path": row.pop("path", None),
                "image": _image_url(str(hit.id)), **row}

    def check_text(self, text: Any) -> str:
        """The ``text`` field of a request, checked: a non-empty string within the length limit (4xx if not)."""
        if not self.holds_texts:
            raise ApiError(415, "this index holds images: send the image as multipart/form-data in the field "
                                "'file' (e.g. curl -F file=@photo.jpg ...), not a text.")
        if text is None:
            raise ApiError(422, "text is missing: this index holds texts; send {\"text\": \"...\"} as JSON or a "
                                "form field 'text'.")
        if not isinstance(text, str):
            raise ApiError(422, f"text must be a string, got {type(text).__name__}.")
        if not text.strip():
            raise ApiError(422, "text is empty: send the words to search for.")
        if len(text) > self.max_text_chars:
            raise ApiError(413, f"the text has {len(text):,} characters, over the server's limit of "
                                f"{self.max_text_chars:,}; send a shorter text.")
        return text

    def manifest_path(self, path: Path) -> str:
        """How the manifest names a stored upload: relative to the index folder when inside it (the folder can
        move), else absolute."""
        folder = getattr(self.index, "folder", None)
        if folder is not None and path.resolve().is_relative_to(Path(folder).resolve()):
            return path.resolve().relative_to(Path(folder).resolve()).as_posix()
        return str(path.resolve())

    def check_token(self, request: Request) -> None:
        if self.token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            raise ApiError(401, "this server needs a token for changes: send the header 'Authorization: Bearer "
                                "<token>' with the value of LOOKALIKE_TOKEN the server was started with.")

    def health(self) -> dict:
        index = self.index
        return {"status": "ok", "items": len(index), "dim": int(index.dim), "model": _model_summary(index.info),
                "holds_texts": self.holds_texts, "writes_need_token": self.token is not None,
                "limits": {"max_upload_mb": round(self.max_upload / 2**20, 3), "max_pixels": self.max_pixels,
                           "max_top_k": MAX_TOP_K, "max_text_chars": self.max_text_chars},
                "batching": {"enabled": self.batcher is not None, "max_wait_ms": self.batch_wait_ms,
                             "max_batch": self.batcher.max_batch if self.batcher is not None else 1,
                             "model_calls": self.model_calls}}


def _json_value(value: Any) -> Any:
    """A manifest cell as JSON: numpy scalars as Python values, NaN (an empty CSV cell) as null."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _image_url(item_id: str) -> str:
    return f"/items/{quote(item_id, safe='/')}/image"


def _model_summary(info: dict) -> dict:
    """The model identity from index.json, without the long parts (transforms in full)."""
    info = dict(info or {})
    model = info.get("model") if isinstance(info.get("model"), dict) else info
    keep = ("run", "checkpoint", "checkpoint_sha256", "extractor", "image_size", "transforms", "distance", "backend",
            "created")
    summary = {key: model[key] for key in keep if key in model}
    for key in ("distance", "backend", "created"):
        if key not in summary and key in info:
            summary[key] = info[key]
    return summary


# -- errors ------------------------------------------------------------------------------------------------
def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x not in ("query", "body", "path", "form")]
        name = ".".join(loc) or "request"
        if name == "top_k":
            parts.append(f"top_k must be a whole number from 1 to {MAX_TOP_K} (got {err.get('input')!r})")
        elif err.get("type") == "missing":
            parts.append(f"{name} is missing")
        else:
            parts.append(f"{name}: {err.get('msg')} (got {err.get('input')!r})")
    return "; ".join(parts) + "."


def _add_error_handlers(app: FastAPI) -> None:
    from lookalike.index import DuplicateItemError, IndexFormatError, UnknownItemError

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = (f"no such endpoint: {request.method} {request.url.path}; the endpoints are GET /, "
                       f"GET /health, POST /search, GET /items/{{id}}, GET /items/{{id}}/image, "
                       f"GET /items/{{id}}/similar, POST /items, DELETE /items/{{id}}.")
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}; see GET /health and GET / for usage."
        return _error(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_message(exc))

    @app.exception_handler(UnknownItemError)
    async def unknown_item(request: Request, exc: UnknownItemError) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(DuplicateItemError)
    async def duplicate_item(request: Request, exc: DuplicateItemError) -> JSONResponse:
        return _error(409, str(exc))

    @app.exception_handler(IndexFormatError)
    async def damaged_index(request: Request, exc: IndexFormatError) -> JSONResponse:
        log.error("index error on %s %s: %s", request.method, request.url.path, exc)
        return _error(500, f"the server's index cannot be used: {exc}")

    @app.exception_handler(LookalikeError)
    async def user_error(request: Request, exc: LookalikeError) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}) on {request.method} {request.url.path}; the "
                           f"server log has the details. Please report it.")


# -- routes ------------------------------------------------------------------------------------------------
async def _read_form(request: Request, service: _Service, *, fields: int) -> tuple[bytes, dict[str, str]]:
    """The multipart body: the bytes of its ``file`` part and its other fields as strings (a 4xx if bad)."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise ApiError(400, f"send the image as multipart/form-data with the field 'file' (got Content-Type "
                            f"{content_type or 'none'!r}); e.g. curl -F file=@photo.jpg {request.url.path}")
    try:
        form = await request.form(max_files=1, max_fields=fields)
    except HTTPException:
        raise
    except Exception as exc:  # malformed multipart, too many parts, ...
        raise ApiError(400, f"the multipart body could not be parsed ({exc}); send one 'file' field and "
                            f"plain text fields.") from None
    try:
        upload = form.get("file")
        if upload is None:
            raise ApiError(422, "file is missing: send the image in the multipart field 'file' "
                                "(e.g. curl -F file=@photo.jpg ...).")
        if not isinstance(upload, UploadFile):
            raise ApiError(422, "the field 'file' must be a file upload, not a text field "
                                "(curl -F file=@photo.jpg, with the @).")
        data = await upload.read(service.max_upload + 1)
        if len(data) > service.max_upload:
            raise ApiError(413, f"the uploaded file is larger than the server's limit of "
                                f"{service.max_upload / 2**20:.4g} MB; send a smaller image.")
        others = {}
        for key, value in form.multi_items():
            if key == "file":
                continue
            if not isinstance(value, str):
                raise ApiError(422, f"only one file may be sent (in 'file'); {key!r} is a file too.")
            others[key] = value
        return data, others
    finally:
        await form.close()


async def _read_text_request(request: Request, service: _Service, *, fields: int) -> dict[str, Any]:
    """The fields of a text request: a JSON object, or a form (urlencoded or multipart without files)."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("application/json"):
        body = await request.body()
        if len(body) > service.max_upload:
            raise ApiError(413, f"the request body is larger than the server's limit of "
                                f"{service.max_upload / 2**20:.4g} MB.")
        import json

        try:
            value = json.loads(body or b"null")
        except ValueError as exc:
            raise ApiError(400, f"the body is not valid JSON ({exc}); send e.g. {{\"text\": \"red heart\", "
                                "\"top_k\": 5}.") from None
        if not isinstance(value, dict):
            raise ApiError(422, "the JSON body must be an object such as {\"text\": \"red heart\", \"top_k\": 5}.")
        return {k: (str(v) if k == "top_k" and v is not None else v) for k, v in value.items()}
    if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        try:
            form = await request.form(max_files=1, max_fields=fields)
        except HTTPException:
            raise
        except Exception as exc:
            raise ApiError(400, f"the form could not be parsed ({exc}).") from None
        try:
            out = {}
            for key, value in form.multi_items():
                if not isinstance(value, str):
                    if service.holds_texts:
                        raise ApiError(415, f"this index holds texts: send the query in the field 'text', not a "
                                            f"file (field {key!r}).")
                    raise ApiError(422, f"{key!r} must be a text field.")
                out[key] = value
            return out
        finally:
            await form.close()
    if service.holds_texts:
        raise ApiError(400, f"send the text as JSON ({{\"text\": \"...\"}}) or as a form field 'text' (got "
                            f"Content-Type {content_type or 'none'!r}); e.g. curl -d text='red heart' "
                            f"{request.url.path}")
    raise ApiError(400, f"send the image as multipart/form-data with the field 'file' (got Content-Type "
                        f"{content_type or 'none'!r}); e.g. curl -F file=@photo.jpg {request.url.path}")


def _parse_top_k(value: str | None) -> int:
    if value is None or value == "":
        return 5
    try:
        top_k = int(value)
    except ValueError:
        top_k = 0
    if not 1 <= top_k <= MAX_TOP_K:
        raise ApiError(422, f"top_k must be a whole number from 1 to {MAX_TOP_K} (got {value!r}).")
    return top_k


def _add_routes(app: FastAPI, service: _Service) -> None:
    index = service.index

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(_PAGE.read_text(encoding="utf-8"))

    @app.get("/health")
    def health() -> dict:
        return service.health()

    @app.post("/search")
    async def search(request: Request) -> dict:
        """Multipart ``file`` (an image) and optional ``top_k`` -> the nearest items; for an index of texts a
        ``text`` field (JSON body or form) instead of the file."""
        started = time.perf_counter()
        if service.holds_texts:
            fields = await _read_text_request(request, service, fields=8)
            text = service.check_text(fields.get("text"))
            top_k = _parse_top_k(fields.get("top_k", request.query_params.get("top_k")))

            def work() -> list:
                hits = index.search(service.embed(text), top_k=service.top_k(top_k))[0]
                return [service.result(hit) for hit in hits]

            results = await run_in_threadpool(work)
            return {"results": results, "took_ms": round((time.perf_counter() - started) * 1000, 2)}
        data, fields = await _read_form(request, service, fields=8)
        top_k = _parse_top_k(fields.get("top_k", request.query_params.get("top_k")))

        def work() -> list:
            image = decode_image(data, max_pixels=service.max_pixels).image
            hits = index.search(service.embed(image), top_k=service.top_k(top_k))[0]
            return [service.result(hit) for hit in hits]

        results = await run_in_threadpool(work)
        return {"results": results, "took_ms": round((time.perf_counter() - started) * 1000, 2)}

    @app.get("/items/{item_id:path}/image")
    def item_image(item_id: str) -> FileResponse:
        """The image file of an indexed item (its path from the manifest, never from the client)."""
        path = Path(index.image_path(item_id))
        if not path.is_file():
            raise ApiError(404, f"the image of item {item_id!r} is missing on the server ({path.name} is not in "
                                f"its folder any more); re-add the item or rebuild the index.")
        return FileResponse(path)

    @app.get("/items/{item_id:path}/similar")
    def item_similar(item_id: str, top_k: int = Query(5, ge=1, le=MAX_TOP_K)) -> dict:
        """The nearest items to an indexed item (itself excluded)."""
        started = time.perf_counter()
        hits = index.similar(item_id, top_k=service.top_k(top_k))
        return {"results": [service.result(hit) for hit in hits],
                "took_ms": round((time.perf_counter() - started) * 1000, 2)}

    @app.get("/items/{item_id:path}")
    def item(item_id: str) -> dict:
        """An item's manifest row."""
        row = {key: _json_value(value) for key, value in dict(index.get(item_id)).items()}
        row.pop("id", None)
        return {"id": item_id, **row, "image": None if service.holds_texts else _image_url(item_id)}

    @app.post("/items", status_code=201)
    async def add_item(request: Request) -> JSONResponse:
        """Multipart ``file`` plus optional ``id`` and manifest fields -> 201 {"id"}; durable when answered."""
        service.check_token(request)
        if service.holds_texts:
            fields = await _read_text_request(request, service, fields=64)
            text = service.check_text(fields.pop("text", None))
            item_id = str(fields.pop("id", "") or "").strip() or None
            for key in fields:
                if key in _RESERVED_FIELDS:
                    raise ApiError(422, f"the field {key!r} cannot be set on a text item.")
            new_id = await run_in_threadpool(_add_text, service, text, item_id, fields)
            return JSONResponse({"id": new_id}, status_code=201, headers={"Location": f"/items/{quote(new_id)}"})
        data, fields = await _read_form(request, service, fields=64)
        item_id = fields.pop("id", "").strip() or None
        for key in fields:
            if key in _RESERVED_FIELDS:
                raise ApiError(422, f"the field {key!r} cannot be set: the server stores the image and sets it.")
        new_id = await run_in_threadpool(_add, service, data, item_id, fields)
        return JSONResponse({"id": new_id}, status_code=201, headers={"Location": f"/items/{quote(new_id)}"})

    @app.delete("/items/{item_id:path}")
    def delete_item(item_id: str, request: Request) -> dict:
        """Removes an item from the index (durable when answered); its uploaded file, if any, is deleted."""
        service.check_token(request)
        with service.write_lock:
            path = _stored_upload(service, item_id)
            index.remove([item_id])
        if path is not None:
            path.unlink(missing_ok=True)
        return {"id": item_id, "deleted": True, "items": len(index)}


def _stored_upload(service: _Service, item_id: str) -> Path | None:
    """The file of an item that was uploaded to this server (inside upload_dir), else None."""
    from lookalike.index import UnknownItemError

    if item_id not in service.index:
        return None
    try:
        path = Path(service.index.image_path(item_id)).resolve()
    except UnknownItemError:  # an item without an image file
        return None
    upload_dir = service.upload_dir.resolve()
    return path if path.parent == upload_dir else None


def _add(service: _Service, data: bytes, item_id: str | None, fields: dict[str, str]) -> str:
    from lookalike.io import write_bytes_atomic

    decoded = decode_image(data, max_pixels=service.max_pixels)
    embedding = service.embed(decoded.image)
    name = uuid.uuid4().hex
    item_id = item_id or f"upload-{name[:16]}"
    path = service.upload_dir / f"{name}{decoded.extension}"
    with service.write_lock:
        if item_id in service.index:
            raise ApiError(409, f"an item with id {item_id!r} exists already; choose another id, or leave 'id' "
                                f"out and the server generates one.")
        write_bytes_atomic(path, data)  # the file is on disk before the index refers to it
        try:
            service.index.add([item_id], embedding, rows=[{"path": service.manifest_path(path), **fields}])
        except BaseException:
            path.unlink(missing_ok=True)
            raise
    return item_id


def _add_text(service: _Service, text: str, item_id: str | None, fields: dict[str, Any]) -> str:
    """Adds a text item (its manifest row holds the text); durable when it returns."""
    embedding = service.embed(text)
    item_id = item_id or f"text-{uuid.uuid4().hex[:16]}"
    rows = [{"text": text, **{k: _json_value(v) for k, v in fields.items()}}]
    with service.write_lock:
        if item_id in service.index:
            raise ApiError(409, f"an item with id {item_id!r} exists already; choose another id, or leave 'id' "
                                f"out and the server generates one.")
        service.index.add([item_id], embedding, rows=rows)
    return item_id
