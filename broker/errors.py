"""Exception types and their mapping to the API's error envelope."""

from __future__ import annotations


class ConfigError(Exception):
    """Start-up configuration is wrong; the message tells the operator what to fix."""


class CryptoError(Exception):
    """A ciphertext could not be decrypted (wrong key, unknown key id, or tampering)."""


class ApiError(Exception):
    """An error with a status and a stable machine-readable code, rendered as
    ``{"error": {"code", "message", "request_id"}}``."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class BadRequest(ApiError):
    status, code = 400, "bad_request"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"

    def __init__(self) -> None:
        # One body for every authentication failure: no oracle for which part was wrong.
        super().__init__("Missing or invalid API key.")


class Forbidden(ApiError):
    status, code = 403, "forbidden"


class NotFound(ApiError):
    status, code = 404, "not_found"


class Conflict(ApiError):
    status, code = 409, "conflict"


class Unprocessable(ApiError):
    status, code = 422, "validation_error"


class Unavailable(ApiError):
    status, code = 503, "unavailable"
