"""Large language models for the course: an OpenAI-compatible client and a local llama.cpp server.

* :mod:`bgekit.llm.client`: :class:`LLMClient` talks to any server that speaks the OpenAI
  chat-completions API (Novita AI, OpenAI, vLLM, llama.cpp), with provider presets, the ``openai``
  package's retries, and clear errors; :func:`default_client` picks a provider from the environment.
* :mod:`bgekit.llm.server`: :func:`local_server` runs SmolLM2-135M-Instruct behind llama-cpp-python's
  server on 127.0.0.1 and yields a ready client (offline, CPU).
* :mod:`bgekit.llm.errors`: one error class per failure, all subclasses of :class:`LLMError`.

Example::

    from bgekit.llm import LLMClient, default_client, local_server

    llm = LLMClient(provider="novita")                 # key from $NOVITA_API_KEY
    print(llm.chat("Say hello in five words."))

    with local_server() as llm:                        # offline: SmolLM2-135M behind llama.cpp
        for piece in llm.stream("Name three colours."):
            print(piece, end="")

API keys come only from arguments or environment variables. They are never logged, never shown
in ``repr``/``str`` or error messages, and the client refuses to be pickled.
"""

from __future__ import annotations

from . import client, errors, server
from .client import *  # noqa: F403  (each submodule's __all__ is the public API; stated once, there)
from .errors import *  # noqa: F403
from .server import *  # noqa: F403

__all__: list[str] = []
__all__ += client.__all__
__all__ += errors.__all__
__all__ += server.__all__
