"""``GET /`` and ``/viewer``: the browser viewer, a static page over the public API.

Served without an API key (it holds no data; the page asks for a key when ``/model`` answers
401). Every asset comes from this service: hospital networks have no internet.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

STATIC_DIR = Path(__file__).resolve().parents[2] / "static" / "viewer"
#: The page's files and their media types: nothing else is served from the folder.
ASSETS = {"index.html": "text/html; charset=utf-8", "viewer.js": "text/javascript; charset=utf-8",
          "viewer.css": "text/css; charset=utf-8"}
#: Only this origin, no inline script or style, no framing, no referrer leaving the page.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
                           "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY", "Cache-Control": "no-cache"}

router = APIRouter(tags=["viewer"], include_in_schema=False)


@lru_cache
def asset_bytes(name: str) -> bytes:
    return (STATIC_DIR / name).read_bytes()


def asset_response(name: str) -> Response:
    return Response(asset_bytes(name), media_type=ASSETS[name], headers=SECURITY_HEADERS)


@router.get("/")
@router.get("/viewer")
async def viewer_page() -> Response:
    return asset_response("index.html")


@router.get("/viewer/{name}")
async def viewer_asset(name: str) -> Response:
    if name not in ASSETS:
        raise HTTPException(404, detail={"code": "not_found", "detail": f"no viewer asset {name!r}"})
    return asset_response(name)
