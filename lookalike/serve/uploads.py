"""Upload safety: a request body limit enforced while the body is read, and image decoding restricted to a few
formats with the pixel count checked from the header before any pixel is decoded.

Nothing here trusts what the client says: the Content-Type is ignored (the bytes decide the format), the client's
file name is never used, and a body without a Content-Length is counted as it streams in.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ALLOWED_FORMATS", "BodyTooLarge", "BodyLimitMiddleware", "ApiError", "DecodedImage", "decode_image"]

#: Pillow format names an upload may have (open with only these plugins: no FITS, PSD, EPS, ... parsers run).
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
_EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}


class ApiError(HTTPException):
    """A client error with its status and a message saying what is wrong and how to fix it."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(status_code=status_code, detail=message)


class BodyTooLarge(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than the server's limit of {_size(limit)}; send a "
                              f"smaller image (or start the server with a larger max_upload_mb).")


def _size(n: int) -> str:
    return f"{n / 2**20:.4g} MB"


class BodyLimitMiddleware:
    """Refuses request bodies over ``max_bytes``: at once from the Content-Length header, else by counting the
    body as it is received (chunked uploads), so an oversized body is never read whole."""

    def __init__(self, app: ASGIApp, max_bytes: int, shown_limit: int | None = None) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)
        self.shown_limit = int(shown_limit if shown_limit is not None else max_bytes)  # the limit users set

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_large = int(declared) > self.max_bytes
            except ValueError:
                too_large = False
            if too_large:
                await _send_json(send, 413, BodyTooLarge(self.shown_limit).detail)
                return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.shown_limit)
            return message

        await self.app(scope, counting_receive, send)


async def _send_json(send: Send, status: int, message: str) -> None:
    import json

    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


@dataclass
class DecodedImage:
    """A fully decoded upload: the Pillow image, its format name and the file extension for that format."""

    image: Image.Image
    format: str
    extension: str


def decode_image(data: bytes, *, max_pixels: int, field: str = "file") -> DecodedImage:
    """Upload bytes -> a decoded image, or an ``ApiError``: empty (400), not an allowed format (415), over
    ``max_pixels`` by its header (413, before decoding), truncated or damaged (400)."""
    if not data:
        raise ApiError(400, f"the uploaded {field!r} is empty; send an image file ({_formats()}).")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)  # lazy: reads the header only
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ApiError(413, f"the uploaded image has too many pixels (over Pillow's decompression-bomb limit); "
                            f"send an image of at most {max_pixels:,} pixels.") from None
    except UnidentifiedImageError:
        raise ApiError(415, f"the uploaded {field!r} is not an image in a supported format; send {_formats()} "
                            f"(the file's bytes decide, not its name or Content-Type).") from None
    except Exception as exc:  # a header so damaged that a plugin fails while identifying it
        raise ApiError(400, f"the uploaded {field!r} could not be read as an image ({type(exc).__name__}: "
                            f"{exc}); send an undamaged {_formats()} file.") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ApiError(413, f"the uploaded image is {width} x {height} = {width * height:,} pixels, over the "
                            f"server's limit of {max_pixels:,}; send a smaller image (or start the server with "
                            f"a larger max_pixels).")
    if width == 0 or height == 0:
        raise ApiError(400, f"the uploaded image is {width} x {height} pixels; send an image with pixels.")
    try:
        image.load()
    except Exception as exc:  # truncated data, bad compressed stream, ...
        raise ApiError(400, f"the uploaded image could not be decoded ({type(exc).__name__}: {exc}); the file is "
                            f"truncated or damaged, send the complete file.") from None
    fmt = image.format or "PNG"
    return DecodedImage(image, fmt, _EXTENSIONS.get(fmt, ".img"))


def _formats() -> str:
    return ", ".join(ALLOWED_FORMATS[:-1]) + " or " + ALLOWED_FORMATS[-1]
