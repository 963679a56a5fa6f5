"""The errors of :mod:`bgekit.llm`: one class per failure a user can act on, all subclasses of :class:`LLMError`.

Each message says what went wrong and what to do; none ever contains an API key.
"""

from __future__ import annotations

__all__ = [
    "LLMError",
    "MissingAPIKeyError",
    "LLMConnectionError",
    "LLMTimeoutError",
    "RateLimitError",
    "ServerError",
    "AuthenticationError",
    "ModelNotFoundError",
    "BadRequestError",
    "LocalServerError",
]


class LLMError(RuntimeError):
    """Base class of every error raised by :mod:`bgekit.llm`."""


class MissingAPIKeyError(LLMError):
    """No API key was given and the provider's environment variable is not set."""


class LLMConnectionError(LLMError):
    """The server could not be reached (refused, DNS failure, reset), also after the retries."""


class LLMTimeoutError(LLMConnectionError):
    """The server accepted the connection but did not answer within ``timeout`` seconds."""


class RateLimitError(LLMError):
    """HTTP 429 Too Many Requests, also after the retries."""


class ServerError(LLMError):
    """HTTP 5xx (or 408/409), also after the retries: the server has a problem."""


class AuthenticationError(LLMError):
    """HTTP 401/403: the key was rejected (not retried)."""


class ModelNotFoundError(LLMError):
    """The server does not know the requested model (HTTP 404 or a 'model not found' message; not retried)."""


class BadRequestError(LLMError):
    """Any other 4xx: the request itself is wrong (too long a prompt, a bad parameter, ...); not retried."""


class LocalServerError(LLMError):
    """The local llama.cpp server could not be started."""
