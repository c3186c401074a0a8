"""Responses built once per overview snapshot, optionally gzip-compressed.

The overview of 1,000 services is a few MB of HTML and about 1 MB of JSON.
Rendering and compressing it once per snapshot, instead of once per
request, is what lets many viewers share one server.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Hashable

from fastapi import Request, Response

from cronledger.web.data import Snapshot

# Level 5 compresses the overview about 10:1 in a few tens of ms, once per snapshot.
GZIP_LEVEL = 5


def accepts_gzip(request: Request) -> bool:
    return "gzip" in request.headers.get("accept-encoding", "").lower()


def _encode(render: Callable[[], str | bytes]) -> Callable[[], bytes]:
    def encoded() -> bytes:
        body = render()
        return body.encode() if isinstance(body, str) else body

    return encoded


def warm_rendering(snapshot: Snapshot, key: Hashable, render: Callable[[], str | bytes]) -> None:
    """Make the rendering ``key`` and its compressed form before a request needs them."""
    body: bytes = snapshot.rendered(key, _encode(render))
    snapshot.rendered(("gzip", key), lambda: gzip.compress(body, GZIP_LEVEL))


def is_rendered(request: Request, snapshot: Snapshot, key: Hashable) -> bool:
    """Return True if ``snapshot_response`` for ``key`` would only send stored bytes."""
    stored = ("gzip", key) if accepts_gzip(request) else key
    return stored in snapshot.renderings


def snapshot_response(
    request: Request,
    snapshot: Snapshot,
    key: Hashable,
    render: Callable[[], str | bytes],
    media_type: str,
) -> Response:
    """Return the rendering ``key`` of ``snapshot``, compressed when the client accepts it."""

    body: bytes = snapshot.rendered(key, _encode(render))
    headers = {"Vary": "Accept-Encoding"}
    if accepts_gzip(request):
        body = snapshot.rendered(("gzip", key), lambda: gzip.compress(body, GZIP_LEVEL))
        headers["Content-Encoding"] = "gzip"
    return Response(body, media_type=media_type, headers=headers)
