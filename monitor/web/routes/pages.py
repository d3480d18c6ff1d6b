"""The status page and its files (monitor/web/static)."""
from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from monitor.web.deps import ServerDep
from monitor.web.errors import NO_STORE
from monitor.web.paths import STATIC_FILE

PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; media-src 'self'; "
            "connect-src 'self'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

router = APIRouter()


@router.get("/", include_in_schema=False)
async def page(server: ServerDep) -> Response:
    body, ctype = server.static["index.html"]
    return Response(body, 200, {**NO_STORE, "Content-Security-Policy": PAGE_CSP,
                                "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}, ctype)


@router.get(f"/static/{STATIC_FILE}", include_in_schema=False)
async def static(name: str, server: ServerDep) -> Response:
    body, ctype = server.static[name]
    return Response(body, 200, NO_STORE, ctype)
