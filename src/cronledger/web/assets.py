"""The dashboard's static files (style, script, icon), served from memory.

They are three small files that every page loads. Starlette's StaticFiles
reads each from disk in a worker thread. Under load that thread waits for
the event loop and the interpreter lock behind every cached page, so a
300-byte icon was slower than the overview itself. Read once at start-up and
sent from the event loop, each costs no more than a cached page.
"""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Request, Response

from cronledger.web.responses import GZIP_LEVEL, accepts_gzip

STATIC_DIRECTORY = Path(__file__).parent / "static"

# Fixed here, because mimetypes reads the system's tables, which differ
# (application/javascript or text/javascript).
MEDIA_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}

# Browsers ask again after this many seconds, and get 304 while the ETag matches.
MAX_AGE_SECONDS = 300


@dataclass(frozen=True)
class Asset:
    body: bytes
    compressed: bytes
    media_type: str
    etag: str


def load_assets(directory: Path = STATIC_DIRECTORY) -> dict[str, Asset]:
    """Read every file of ``directory`` (not its subfolders) into memory."""
    assets = {}
    for path in sorted(directory.iterdir()):
        if not path.is_file():
            continue
        body = path.read_bytes()
        media_type = MEDIA_TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0]
        media_type = media_type or "application/octet-stream"
        if media_type.startswith("text/") or media_type.endswith("svg+xml"):
            media_type += "; charset=utf-8"
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        assets[path.name] = Asset(body, gzip.compress(body, GZIP_LEVEL), media_type, etag)
    return assets


def asset_router(assets: dict[str, Asset]) -> APIRouter:
    """Return a router that serves ``assets`` under /static/NAME."""
    router = APIRouter()

    @router.api_route("/static/{name}", methods=["GET", "HEAD"], include_in_schema=False)
    async def static_file(request: Request, name: str) -> Response:
        asset = assets.get(name)
        if asset is None:
            return Response("Not Found", status_code=404, media_type="text/plain")
        headers = {
            "ETag": asset.etag,
            "Cache-Control": f"public, max-age={MAX_AGE_SECONDS}",
            "Vary": "Accept-Encoding",
        }
        compressed = accepts_gzip(request)
        if compressed:
            # A strong ETag names one representation, so the gzip one has its own.
            headers["ETag"] = asset.etag[:-1] + '-gzip"'
        if headers["ETag"] in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        if not compressed:
            return Response(asset.body, media_type=asset.media_type, headers=headers)
        headers["Content-Encoding"] = "gzip"
        return Response(asset.compressed, media_type=asset.media_type, headers=headers)

    return router
