"""The bridge's own error tree. Every edge turns these into its protocol's error."""

from __future__ import annotations


class BridgeError(Exception):
    """Base of every error the bridge reports to whoever sent the bad input."""

    code = "error"
    status = 400

    def __init__(self, detail: str, *, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "detail": self.detail}


class InvalidInput(BridgeError):
    code = "invalid"
    status = 400


class TooLarge(InvalidInput):
    code = "too_large"
    status = 413


class RoomNotFound(BridgeError):
    code = "room_not_found"
    status = 404


class NotFound(BridgeError):
    code = "not_found"
    status = 404


class AuthRequired(BridgeError):
    code = "auth_required"
    status = 401


class Forbidden(BridgeError):
    code = "forbidden"
    status = 403


class MethodNotAllowed(BridgeError):
    code = "method_not_allowed"
    status = 405


class RateLimited(BridgeError):
    """A sender over its edge's rate (bridge/ratelimit.py); `retry_after` in seconds."""

    code = "rate_limited"
    status = 429

    def __init__(self, detail: str, *, retry_after: float) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class Unavailable(BridgeError):
    """A dependency the request needs (the database) is away: the same request may
    succeed shortly (a message sent again with its `client_id` is stored once)."""

    code = "unavailable"
    status = 503
