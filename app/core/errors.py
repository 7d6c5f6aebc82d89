"""Every error leaves as JSON ``{"detail": <what was wrong>, "code": <machine code>}``."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.pipeline.errors import PipelineError, Problem
from app.services.admission import Overloaded

log = logging.getLogger("app.errors")
#: The one place pipeline problems become HTTP statuses.
STATUS_OF_PROBLEM = {Problem.EMPTY: 400, Problem.CORRUPT: 400, Problem.TOO_LARGE: 413, Problem.UNSUPPORTED: 415,
                     Problem.INVALID: 422}
HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
              413: "payload_too_large", 415: "unsupported_media_type", 422: "invalid_parameter",
              503: "not_ready"}


def error_response(status: int, code: str, detail: str, request: Request | None = None,
                   headers: dict[str, str] | None = None, **extra: object) -> JSONResponse:
    body = {"detail": detail, "code": code, **extra}
    rid = getattr(request.state, "request_id", None) if request is not None else None
    if rid:
        body["request_id"] = rid
    return JSONResponse(body, status_code=status, headers=headers)


#: What to do when an upload field is missing (a raw body, or another field name, is the usual cause).
UPLOAD_HINTS = {"file": "send the image as multipart/form-data field 'file' (curl -F file=@image.png)",
                "files": "send the images as repeated multipart/form-data fields 'files' "
                         "(curl -F files=@a.png -F files=@b.png)"}


def _describe(errors: list[dict]) -> str:
    parts = []
    for e in errors:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        hint = UPLOAD_HINTS.get(loc) if e.get("type") == "missing" else None
        parts.append(f"{loc}: {e.get('msg', 'invalid')}" + (f": {hint}" if hint else ""))
    return "; ".join(parts) or "invalid request"


def log_refusal(exc: PipelineError, status: int, request: Request) -> None:
    """One line per refused input, by its code only: the message may quote the file, and the decoders'
    tracebacks are the file's fault, not the service's. A file that cannot be decoded is a warning (a
    modality or gateway sending damaged files is worth an operator's look); a refusal by rule (too large,
    not selected...) is the service doing its job."""
    level = logging.WARNING if exc.problem is Problem.CORRUPT else logging.INFO
    log.log(level, "refused an input on %s: %d %s (request %s)", request.url.path, status, exc.code,
            getattr(request.state, "request_id", "-"))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(PipelineError)
    async def _pipeline_error(request: Request, exc: PipelineError) -> JSONResponse:
        status = STATUS_OF_PROBLEM[exc.problem]
        log_refusal(exc, status, request)
        return error_response(status, exc.code, exc.message, request)

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        log.info("refused on %s: 503 %s (request %s)", request.url.path, exc.code,
                 getattr(request.state, "request_id", "-"))
        return error_response(503, exc.code, exc.message, request, headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # The offending input is not echoed back: it may be (part of) an uploaded file.
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()]
        return error_response(422, "invalid_parameter", _describe(errors), request, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "error")
        if isinstance(exc.detail, dict):
            code, detail = exc.detail.get("code", code), exc.detail.get("detail", "")
        else:
            detail = str(exc.detail)
        return error_response(exc.status_code, code, detail, request, headers=getattr(exc, "headers", None))
