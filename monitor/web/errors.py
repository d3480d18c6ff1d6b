"""ApiError: every refusal of the HTTP port, the guard's before routing and the routes' own, answered as JSON
{"error": message} with its status and headers."""
from __future__ import annotations

from typing import Mapping

from fastapi.responses import JSONResponse

NO_STORE = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}


class ApiError(Exception):
    """An error answered as JSON {"error": message} with this HTTP status. Raised by a route, the application's
    handler passes the message through api.without_paths() (server paths become the config keys that name
    them); raised by the guard, it is answered before any route."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status, {**NO_STORE, **(headers or {})})
