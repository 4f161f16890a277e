"""Errors answered as OpenAI error envelopes: the exception, its constructor, and the response."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from shoestring.serve.protocol import error_body

__all__ = ["ApiError", "api_error", "error_response"]


class ApiError(Exception):
    """An error answered as an OpenAI error envelope with ``status`` (and maybe Retry-After)."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str,
        code: str | None = None,
        retry_after: int | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code = status, message, kind, code
        self.retry_after, self.param = retry_after, param


def api_error(
    status: int, message: str, code: str | None = None, retry_after: int | None = None, param: str | None = None
) -> ApiError:
    kind = {
        400: "invalid_request_error",
        401: "authentication_error",
        404: "not_found_error",
        408: "invalid_request_error",
        413: "invalid_request_error",
        429: "rate_limit_error",
    }.get(status, "server_error")
    return ApiError(status, message, kind, code, retry_after, param)




def error_response(err: ApiError) -> JSONResponse:
    """The JSON envelope of ``err``, with Retry-After when it has one."""
    headers = {"Retry-After": str(err.retry_after)} if err.retry_after is not None else None
    return JSONResponse(error_body(err.message, err.kind, err.code, err.param), status_code=err.status, headers=headers)
