"""Error shapes and the bearer-token gate of the admin API.

Every error the API returns is JSON with an "error" string (validation errors add a "detail" list), and
nothing a client sends can produce a traceback: unexpected exceptions are logged here and answered with a
generic 500. The token gate is ASGI middleware rather than a FastAPI dependency so that it runs before the
body is parsed: an unauthenticated caller learns nothing about what a valid request looks like.
ControlCharacterGate, inside it, refuses (400) a path or query string holding a control character before any
handler can hand one to the store; JSON bodies get the same check from the request models.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from autoscaler.api.schemas import control_character

log = logging.getLogger(__name__)

MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _where(loc: Any) -> str:
    return ".".join(str(part) for part in loc) if isinstance(loc, list | tuple) else str(loc)


def _message(err: Any) -> str:
    msg = str(err.get("msg", ""))
    ctx = err.get("ctx")
    if err.get("type") == "json_invalid" and isinstance(ctx, dict) and isinstance(ctx.get("error"), str):
        return f"{msg}: {ctx['error']}"  # the parser's own words say where the JSON broke
    return msg


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Only loc/msg/type: "input" and "ctx" may hold NaN or bytes, which would not even serialise to JSON.
    detail = [
        {"loc": [str(p) for p in err.get("loc", ())], "msg": _message(err), "type": str(err.get("type"))}
        for err in exc.errors()
    ]
    first = detail[0] if detail else {"loc": [], "msg": "invalid request"}
    summary = f"{_where(first['loc'])}: {first['msg']}" if first["loc"] else str(first["msg"])
    return JSONResponse({"error": summary, "detail": detail}, status_code=422)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return error(exc.status_code, str(exc.detail), dict(exc.headers) if exc.headers else None)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("admin API %s %s failed", request.method, request.url.path)
    return error(500, "internal error (see the daemon log)")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


class BearerTokenGate:
    """Mutating methods need `Authorization: Bearer <token>`; reads are open.

    With no token configured every mutating call is refused (403): an admin API that anyone on the network
    may pause or override is worse than one that cannot be changed at all.
    """

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in MUTATING_METHODS:
            refusal = self._refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope) -> JSONResponse | None:
        if self.token is None:
            return error(403, "no admin token configured")
        header = b""
        for name, value in scope.get("headers", ()):
            if name.lower() == b"authorization":
                header = value
                break
        scheme, _, given = header.partition(b" ")
        challenge = {"WWW-Authenticate": "Bearer"}
        if scheme.lower() != b"bearer" or not given.strip():
            return error(401, "missing bearer token", challenge)
        if not hmac.compare_digest(given.strip(), self.token):
            return error(401, "invalid bearer token", {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return None


# A path parameter may hold anything but a C0 control character or DEL (ControlCharacterGate refuses those).
PATH_TEXT_PATTERN = "^[^\u0000-\u001f\u007f]*$"
_ERROR_SCHEMA = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR_SCHEMA}}}


def document_gates(app: FastAPI) -> None:
    """Make the OpenAPI document say what the gates do, on every operation present and future: a path parameter
    excludes control characters, any request may get 400 for one, and every mutating call may get 401."""
    build = app.openapi
    done = False

    def openapi() -> dict[str, Any]:
        nonlocal done
        doc = build()
        if not done:
            done = True
            for ops in doc.get("paths", {}).values():
                for method, op in ops.items():
                    if not isinstance(op, dict) or "responses" not in op:
                        continue
                    for param in op.get("parameters", []):
                        if param.get("in") == "path" and isinstance(param.get("schema"), dict):
                            param["schema"].setdefault("pattern", PATH_TEXT_PATTERN)
                    responses = op["responses"]
                    responses.setdefault("400", _error_response("a control character in the path or query"))
                    if method.upper() in MUTATING_METHODS:
                        responses.setdefault("401", _error_response("missing or wrong bearer token"))
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


class ControlCharacterGate:
    """Refuses (400) a request whose decoded path or query string holds a control character.

    Path and query parameters are otherwise plain strings that handlers pass to the store, and PostgreSQL cannot
    hold NUL in text: checking every request here, once, covers every route, present and future. Percent-escapes
    are decoded first (the way the router and FastAPI decode them), so "%00" is caught as well as a raw byte.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = self._problem(scope)
            if problem is not None:
                await error(400, problem)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    def _problem(scope: Scope) -> str | None:
        path = scope.get("path", "")
        if isinstance(path, str) and (found := control_character(path)) is not None:
            return f"the URL path must not contain a control character (found {found})"
        query = scope.get("query_string", b"")
        text = query.decode("latin-1") if isinstance(query, bytes) else ""
        for name, value in parse_qsl(text, keep_blank_values=True):
            if (found := control_character(name)) is not None:
                return f"a query parameter name must not contain a control character (found {found})"
            if (found := control_character(value)) is not None:
                return f"query parameter {name[:40]!r} must not contain a control character (found {found})"
        return None
