"""Domain errors → HTTP status, in one place; every error body is {"detail": "human readable"}."""

from __future__ import annotations

import logging

import eventsourcing.persistence
import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from domain.errors import AlreadyExists, Conflict, DomainError, InvalidCommand, NotAllowed, NotFound
from inbox.adapters.eventstore import DeadlinePassed
from inbox.usecases.results import Unavailable

log = logging.getLogger(__name__)

STATUS_BY_ERROR: list[tuple[type[DomainError], int]] = [
    (NotAllowed, 403),
    (NotFound, 404),
    (AlreadyExists, 409),
    (Conflict, 409),
    (InvalidCommand, 422),
]

# The database is unreachable, slow or locked (connection lost, pool exhausted: PoolTimeout, lock or
# statement timeouts), or the ingest queue is full: 503 + Retry-After, never the database's text.
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    Unavailable,
    DeadlinePassed,
    psycopg.OperationalError,
    psycopg.InterfaceError,
    eventsourcing.persistence.OperationalError,
    eventsourcing.persistence.InterfaceError,
)
RETRY_AFTER_S = Unavailable.retry_after


def unavailable_response(detail: str = "the service is temporarily unavailable; retry later") -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install(api: FastAPI) -> None:
    @api.exception_handler(DomainError)
    async def domain_error(_: Request, exc: DomainError) -> JSONResponse:
        status = next((code for kind, code in STATUS_BY_ERROR if isinstance(exc, kind)), 400)
        return JSONResponse({"detail": str(exc)}, status_code=status)

    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.warning("503 on %s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return unavailable_response(str(exc) if isinstance(exc, Unavailable) else
                                    "the database is unavailable; retry later")

    for kind in UNAVAILABLE_ERRORS:
        api.add_exception_handler(kind, unavailable)

    @api.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error; it has been logged"}, status_code=500)

    @api.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_message(exc)}, status_code=422)
