"""An OpenAI-compatible LLM client: one class for every server that speaks the chat-completions API.

Novita AI, OpenAI, vLLM, or llama-cpp-python's server on your laptop (:mod:`bgekit.llm.server`).
The client adds what the course needs on top of the official ``openai`` package: provider presets,
keys that never show, and errors that say what went wrong *and what to do*. Retries are the
``openai`` client's own (configured from ``max_retries`` and ``timeout``): it retries connection
errors, timeouts, HTTP 408, 409, 429 and 5xx with exponential back-off and jitter, and honours a
server's ``Retry-After`` / ``retry-after-ms``; it logs each retry on the ``openai`` logger (INFO).

Example::

    from bgekit.llm import LLMClient

    llm = LLMClient(provider="novita")                 # key from $NOVITA_API_KEY
    print(llm.chat("Say hello in five words."))

API keys come only from arguments or environment variables. They are never logged, never shown
in ``repr``/``str`` or error messages, and the client refuses to be pickled.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import (
    AuthenticationError,
    BadRequestError,
    LLMConnectionError,
    LLMError,
    LLMTimeoutError,
    MissingAPIKeyError,
    ModelNotFoundError,
    RateLimitError,
    ServerError,
)

if TYPE_CHECKING:
    from .server import LocalServer

logger = logging.getLogger(__name__)

__all__ = ["LLMClient", "ProviderPreset", "PROVIDERS", "default_client"]


# --------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class ProviderPreset:
    """Where a provider lives, which environment variable holds its key, and a default model."""

    name: str
    base_url: str
    key_env: str | None
    model: str


PROVIDERS: dict[str, ProviderPreset] = {
    "novita": ProviderPreset(
        "novita", "https://api.novita.ai/v3/openai", "NOVITA_API_KEY", "meta-llama/llama-3.1-8b-instruct"
    ),
    "openai": ProviderPreset("openai", "https://api.openai.com/v1", "OPENAI_API_KEY", "gpt-4o-mini"),
    # llama-cpp-python's server default port; local_server() picks a free port instead.
    "local": ProviderPreset("local", "http://127.0.0.1:8000/v1", None, "local"),
}

# The openai package insists on *some* key; local servers ignore it.
_NO_KEY = "sk-no-key-required"
#: statuses the openai client retries (plus every 5xx); after its last retry they become RateLimitError/ServerError
_RETRY_STATUS = frozenset({408, 409, 429})


# --------------------------------------------------------------------------- client


class LLMClient:
    """Chat with any OpenAI-compatible server, with the ``openai`` client's retries and helpful errors.

    Args:
        base_url: the API root, ending in ``/v1`` for most servers (overrides the preset).
        api_key: the key (overrides the preset's environment variable). Never shown anywhere.
        model: model name sent with each request (overrides the preset's default).
        provider: ``"novita"``, ``"openai"``, ``"local"``; ``None`` means ``"custom"`` when
            ``base_url`` is given, otherwise the first provider whose key is set
            (``NOVITA_API_KEY``, then ``OPENAI_API_KEY``).
        timeout: seconds per HTTP request (each attempt), passed to ``openai.OpenAI(timeout=...)``.
        max_retries: retries after the first attempt, passed to ``openai.OpenAI(max_retries=...)``: the
            openai client retries connection errors, timeouts, HTTP 408/409/429 and 5xx, waiting
            ``0.5 s * 2**i`` (capped at 8 s, up to 25 % less for jitter) or what the server's
            ``Retry-After`` asks (up to the openai package's limit: one or two minutes, by version).
            Other 4xx are never retried.

    Raises:
        MissingAPIKeyError: a provider needs a key and none is given or set in its variable.
        ValueError: an unknown provider, ``max_retries < 0`` or ``timeout <= 0``.

    Every request method raises an :class:`~bgekit.llm.LLMError` subclass that names the URL, the
    model, the number of attempts and what to do: :class:`~bgekit.llm.RateLimitError` (429),
    :class:`~bgekit.llm.ServerError` (5xx, 408, 409), :class:`~bgekit.llm.LLMTimeoutError`,
    :class:`~bgekit.llm.LLMConnectionError`, :class:`~bgekit.llm.AuthenticationError` (401/403),
    :class:`~bgekit.llm.ModelNotFoundError`, :class:`~bgekit.llm.BadRequestError` (other 4xx).

    Example::

        llm = LLMClient(provider="openai", model="gpt-4o-mini")   # key from $OPENAI_API_KEY
        llm.chat("What is a dense retriever?", system="Answer in one sentence.")
        LLMClient(base_url="http://localhost:8000/v1", model="my-vllm-model").models()
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        model: str | None = None,
        provider: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 4,
    ) -> None:
        if provider is None:
            if base_url is not None:
                provider = "custom"
            else:
                provider = _provider_from_env()
                if provider is None:
                    raise MissingAPIKeyError(
                        "No LLM provider configured: set NOVITA_API_KEY (Novita AI) or OPENAI_API_KEY "
                        "(OpenAI) in the environment, pass base_url=... for another OpenAI-compatible "
                        "server, or run a local model with `with bgekit.llm.local_server() as llm:`."
                    )
        provider = provider.lower()
        if provider != "custom" and provider not in PROVIDERS:
            raise ValueError(f"unknown provider {provider!r}; expected one of {sorted(PROVIDERS)} or base_url=...")
        preset = PROVIDERS.get(provider)
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")

        self.provider = provider
        # the openai package's own OPENAI_BASE_URL moves the OpenAI preset (a proxy, or a local
        # OpenAI-compatible server)
        env_url = os.environ.get("OPENAI_BASE_URL") if provider == "openai" else None
        self.base_url = (base_url or env_url or (preset.base_url if preset else "")).rstrip("/")
        self.model: str | None = model or (preset.model if preset else None)  # custom servers: see .models()
        self.key_env = preset.key_env if preset else None
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.server: LocalServer | None = None  # set by local_server()

        key = api_key
        if key is None and self.key_env:
            key = os.environ.get(self.key_env) or None
            if key is None:
                raise MissingAPIKeyError(
                    f"{self.provider} needs an API key: set the environment variable {self.key_env} "
                    f"(e.g. in a terminal `export {self.key_env}=...`, or on Colab in the Secrets panel), "
                    f"or pass api_key=... . Without a key, use the offline model: "
                    f"`with bgekit.llm.local_server() as llm:`."
                )
        self._has_key = key is not None
        self.__api_key = key or _NO_KEY

        import openai  # imported here so that `import bgekit` stays light

        self._openai = openai
        self._client = openai.OpenAI(
            base_url=self.base_url, api_key=self.__api_key, timeout=self.timeout, max_retries=self.max_retries
        )

    # -- hygiene ---------------------------------------------------------------------------

    def __repr__(self) -> str:
        key = "***" if self._has_key else "None"
        return (
            f"LLMClient(provider={self.provider!r}, base_url={self.base_url!r}, model={self.model!r}, "
            f"api_key={key}, timeout={self.timeout:g}, max_retries={self.max_retries})"
        )

    __str__ = __repr__

    def __reduce__(self):  # pickling would write the key to disk
        raise TypeError("LLMClient holds an API key and cannot be pickled; create a new client where you need one")

    def _redact(self, text: str) -> str:
        if self._has_key and self.__api_key:
            text = text.replace(self.__api_key, "***")
        # servers sometimes echo part of a key back ("Incorrect API key provided: sk-ab***yz")
        return re.sub(r"\b(sk|nv|key)[-_][A-Za-z0-9_\-\*]{6,}", r"\1-***", text)

    # -- public API ------------------------------------------------------------------------

    def chat(
        self,
        messages: str | Sequence[dict[str, Any]],
        system: str | None = None,
        temperature: float = 0.0,
        max_tokens: int = 256,
        model: str | None = None,
        **kw: Any,
    ) -> str:
        """Send one chat request and return the reply text.

        Args:
            messages: a prompt string (sent as one user message) or a list of
                ``{"role": ..., "content": ...}`` dicts.
            system: a system message put first.
            temperature, max_tokens: sampling settings (``temperature=0``: the same answer each time).
            model: overrides the client's model for this call.
            kw: other API arguments (``stop``, ``top_p``, ``seed``, ...), sent unchanged.

        Returns:
            The reply text (``""`` when the model said nothing).

        Raises:
            ValueError: malformed messages or no model.
            LLMError: a subclass naming the failure, after the openai client's retries (see the class).

        Example::

            llm.chat("Capital of France?", system="Answer with one word.", max_tokens=5)
        """
        model = self._model(model)
        resp = self._create(messages, system, model, temperature=temperature, max_tokens=max_tokens, **kw)
        if not resp.choices:
            raise LLMError(f"{self.base_url} returned no choices for model {model or self.model!r}")
        return resp.choices[0].message.content or ""

    def stream(
        self,
        messages: str | Sequence[dict[str, Any]],
        system: str | None = None,
        temperature: float = 0.0,
        max_tokens: int = 256,
        model: str | None = None,
        **kw: Any,
    ) -> Iterator[str]:
        """Like :meth:`chat`, but yield the reply in pieces as the server produces them.

        Opening the stream is retried like any request; an error after the first piece is raised
        as :class:`LLMError` without a retry (a retry would repeat text already shown).
        Arguments and errors as for :meth:`chat`.

        Example::

            for piece in llm.stream("Tell me a short joke."):
                print(piece, end="", flush=True)
        """
        stream = self._create(messages, system, self._model(model), temperature=temperature,
                              max_tokens=max_tokens, stream=True, **kw)
        try:
            for chunk in stream:
                if not chunk.choices:
                    continue
                piece = chunk.choices[0].delta.content
                if piece:
                    yield piece
        except self._openai.APIError as exc:
            raise LLMError(
                f"the stream from {self.base_url} broke off: {self._redact(str(exc))[:300]}"
            ) from None
        finally:
            with contextlib.suppress(Exception):
                stream.close()

    def _create(self, messages: str | Sequence[dict[str, Any]], system: str | None, model: str, **params: Any):
        """One chat-completions request (the one place :meth:`chat` and :meth:`stream` build it)."""
        msgs = _to_messages(messages, system)
        return self._request(lambda: self._client.chat.completions.create(model=model, messages=msgs, **params),
                             model=model)

    def _model(self, model: str | None) -> str:
        m = model or self.model
        if not m:
            raise ValueError(
                f"no model given for {self.base_url}: pass model=... to LLMClient or to this call "
                f"(client.models() lists what the server offers)"
            )
        return m

    def complete(self, prompt: str, **kw: Any) -> str:
        """Shorthand for ``chat(prompt, **kw).strip()``."""
        return self.chat(prompt, **kw).strip()

    def models(self) -> list[str]:
        """The model names the server offers (``GET /models``).

        Example::

            LLMClient(provider="novita").models()[:5]
        """
        page = self._request(lambda: self._client.models.list())
        return [m.id for m in page.data]

    # -- errors --------------------------------------------------------------------------

    def _request(self, call: Callable[[], Any], model: str | None = None) -> Any:
        """Run one API call (the openai client retries it) and turn its final failure into an LLMError."""
        openai = self._openai
        model = model or self.model
        try:
            return call()
        except openai.APIStatusError as exc:
            raise self._status_error(exc, model) from None
        except openai.APIConnectionError as exc:  # APITimeoutError included
            raise self._connection_error(exc) from None

    def _tries(self, exc: Any) -> str:
        """``"3 attempts"``: read from the request the openai client sent last (its retry-count header)."""
        n = self.max_retries + 1
        with contextlib.suppress(Exception):
            n = int(exc.request.headers["x-stainless-retry-count"]) + 1
        return f"{n} attempt{'s' if n != 1 else ''}"

    def _connection_error(self, exc: Any) -> LLMError:
        tries = self._tries(exc)
        if isinstance(exc, self._openai.APITimeoutError):
            return LLMTimeoutError(
                f"{self.base_url} did not answer within {self.timeout:g} s ({tries}). The server may be "
                f"overloaded or the prompt too long: raise timeout=..., lower max_tokens, or try later."
            )
        local = self.provider in ("local", "custom") or "127.0.0.1" in self.base_url or "localhost" in self.base_url
        hint = (
            "Start the server (e.g. `with bgekit.llm.local_server() as llm:` or "
            "`python -m llama_cpp.server --model <file.gguf>`) and check base_url and its port."
            if local
            else "Check your internet connection and base_url."
        )
        cause = exc.__cause__ or exc.__context__
        detail = f" ({type(cause).__name__})" if cause is not None else ""
        return LLMConnectionError(f"could not connect to {self.base_url}{detail} ({tries}). {hint}")

    def _status_error(self, exc: Any, model: str | None) -> LLMError:
        status = exc.status_code
        body = self._redact(_error_message(exc))[:300]
        if status == 429:
            return RateLimitError(
                f"{self.base_url} kept answering HTTP 429 Too Many Requests ({self._tries(exc)}): you are "
                f"sending requests too fast or your quota is used up. Wait and retry, send fewer requests, "
                f"raise max_retries, or check the plan/quota of your account. Server said: {body}"
            )
        if status in _RETRY_STATUS or status >= 500:
            return ServerError(
                f"{self.base_url} kept failing with HTTP {status} ({self._tries(exc)}) for model {model!r}: "
                f"the server has a problem. Try again later or another model/provider. Server said: {body}"
            )
        if status in (401, 403):
            where = f"the environment variable {self.key_env}" if self.key_env else "api_key"
            return AuthenticationError(
                f"{self.base_url} rejected the API key (HTTP {status}). Check that {where} holds a valid, "
                f"active key for {self.provider} (the key itself is not shown). Server said: {body}"
            )
        low = body.lower()
        model_msg = "model" in low and any(
            s in low for s in ("not found", "does not exist", "not exist", "unknown", "invalid model")
        )
        if status == 404 or (status in (400, 422) and model_msg):
            return ModelNotFoundError(
                f"model {model!r} was not found at {self.base_url} (HTTP {status}). List the models this "
                f"server offers with `client.models()` and pass one as model=...; if that fails too, check "
                f"that base_url is the API root (most end in /v1). Server said: {body}"
            )
        return BadRequestError(
            f"{self.base_url} refused the request (HTTP {status}) for model {model!r}: {body}. "
            f"Check the messages and parameters (a prompt longer than the model's context gives this too)."
        )


def _to_messages(messages: str | Sequence[dict[str, Any]], system: str | None) -> list[dict[str, Any]]:
    if isinstance(messages, str):
        msgs = [{"role": "user", "content": messages}]
    else:
        msgs = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content', got {m!r:.80}")
            msgs.append(dict(m))
        if not msgs:
            raise ValueError("messages is empty")
    if system is not None:
        msgs = [{"role": "system", "content": system}] + [m for m in msgs]
    return msgs


def _error_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
        if body.get("message"):
            return str(body["message"])
    return str(getattr(exc, "message", "") or exc)


def _provider_from_env() -> str | None:
    for name in ("novita", "openai"):
        env = PROVIDERS[name].key_env
        if env and os.environ.get(env):
            return name
    return None


def default_client(**kw: Any) -> LLMClient | None:
    """A client for the first provider whose key is set, or ``None`` (then use :func:`local_server`).

    ``NOVITA_API_KEY`` → Novita AI, else ``OPENAI_API_KEY`` → OpenAI. The choice is logged (never the key).

    Example::

        llm = default_client()
        if llm is None:
            with local_server() as llm:
                ...
    """
    provider = _provider_from_env()
    if provider is None:
        logger.info("no NOVITA_API_KEY or OPENAI_API_KEY set: use the local llama.cpp server (local_server())")
        return None
    client = LLMClient(provider=provider, **kw)
    logger.info("LLM: %s (%s, model %s), key from $%s", provider, client.base_url, client.model, client.key_env)
    return client
