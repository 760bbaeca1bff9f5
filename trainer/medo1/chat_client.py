"""One OpenAI-compatible chat-completions client, shared by translate, eval and the judge reward.

`POST {base_url}/chat/completions` with httpx, at most `concurrency` requests in flight per client.

Retried, up to `max_retries` more attempts: HTTP 408, 429 and 5xx; timeouts; refused, reset or
broken connections; an HTTP 200 whose body is not a chat completion (a proxy's error page, cut-off
JSON). The wait before retry k is `backoff_s * 2**(k-1)`, capped at `max_backoff_s`, times a random
factor in [0.5, 1] so that many clients do not retry in step; a `Retry-After` header (seconds or an
HTTP date, RFC 9110 section 10.2.3) wins, cut to `max_retry_after_s`. Not retried: HTTP 401 / 403
(the key) and 404 (base_url or model name) raise `ChatEndpointError`, since every request would get
the same; any other 4xx fails that one request with `ChatError`.

Progress: every retry logs one line (the reason, attempt k of n, the wait), and while requests wait
longer than `progress_after_s` for an answer, a line says how many and for how long. When no request has
been answered for `give_up_after_s` (300 s) and one fails again, every request stops with `ChatEndpointError`:
a dead or silent endpoint ends a run within minutes whatever the number of records.

The key is read from the environment variable named by `api_key_env`, sent as a bearer token, and
replaced by `***` in every error and log line. Errors are one line each.

Use::

    config = ChatClientConfig(base_url="http://vllm:8000/v1", model="judge")
    async with ChatClient(config) as client:
        answer = await client.complete([{"role": "user", "content": "Hi"}], temperature=0.0)
        answers = await client.complete_all(list_of_messages, max_tokens=64)
    # or, outside an event loop:
    answers = run_chat(config, list_of_messages, max_tokens=64)
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from pydantic import Field

from medo1.config import Section, StageError

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]


class ChatError(StageError):
    """A request failed for good: its retries were used up, or the answer was one retrying cannot change."""


class ChatEndpointError(ChatError):
    """The endpoint refuses every request (bad key, wrong base_url or model name): stop the run."""


class RetryOptions(Section):
    """Timeouts, retries and progress of requests to an OpenAI-compatible endpoint."""

    timeout_s: float = Field(120.0, gt=0)
    """Seconds one attempt may take, from connecting to the end of the answer, before it is abandoned and retried."""
    connect_timeout_s: float = Field(10.0, gt=0)
    """Seconds to wait for a connection to open (a host that drops packets)."""
    max_retries: int = Field(5, ge=0)
    """Retries of one request after HTTP 408 / 429 / 5xx, a timeout, a refused or broken connection, or a
    malformed answer."""
    backoff_s: float = Field(1.0, gt=0)
    """Wait before the first retry; doubled per retry up to `max_backoff_s`, times a random factor in [0.5, 1]."""
    max_backoff_s: float = Field(60.0, gt=0)
    """Longest wait between two attempts when the server sends no Retry-After."""
    max_retry_after_s: float = Field(300.0, ge=0)
    """Longest wait honoured from a Retry-After header; a longer one is cut to this."""
    progress_after_s: float = Field(30.0, gt=0)
    """Log a line when requests have waited this many seconds for an answer, and again every as many seconds."""
    give_up_after_s: float = Field(300.0, gt=0)
    """Fail the run (one line) when no request has been answered for this many seconds while requests keep failing
    with timeouts, broken connections or 5xx: an endpoint that is down or never answers ends the run in minutes,
    not after every request's retries."""

    def chat_client_config(
        self, base_url: str, model: str | None, api_key_env: str, concurrency: int
    ) -> ChatClientConfig:
        """These options with an endpoint: the config a `ChatClient` is built from."""
        options = {name: getattr(self, name) for name in RetryOptions.model_fields}
        return ChatClientConfig(
            base_url=base_url, model=model, api_key_env=api_key_env, concurrency=concurrency, **options
        )


class ChatClientConfig(RetryOptions):
    """An OpenAI-compatible endpoint and how to talk to it."""

    base_url: str
    """Base URL, e.g. http://vllm:8000/v1 or https://api.openai.com/v1; requests go to BASE_URL/chat/completions."""
    model: str | None = None
    """Model name sent with each request; None leaves it out (a server that serves one model)."""
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the API key (the key itself never goes in a config)."""
    concurrency: int = Field(8, ge=1)
    """Requests in flight at once."""


@dataclass(frozen=True)
class Completion:
    text: str
    """choices[0].message.content ("" when the server sent null)."""
    finish_reason: str | None
    """"stop", "length" (cut off at max_tokens), ... as the server reported it."""


@dataclass
class ChatStats:
    requests: int = 0
    """HTTP attempts, retries included."""
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header as seconds from now: delay-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _one_line(text: str, limit: int = 200) -> str:
    return " ".join(text.split())[:limit]


class ChatClient:
    """Async client for one endpoint; use as `async with ChatClient(config) as client:`."""

    def __init__(self, config: ChatClientConfig):
        base = config.base_url.rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise ChatEndpointError(f"base_url {base!r} is not an http:// or https:// URL")
        self.config = config
        self.url = base + "/chat/completions"
        self.stats = ChatStats()
        self._api_key = os.environ.get(config.api_key_env) or None
        self._semaphore = asyncio.Semaphore(config.concurrency)
        self._tickets = itertools.count()
        self._waiting: dict[int, float] = {}
        """Ticket of each attempt in flight -> when it started (monotonic)."""
        self._http: httpx.AsyncClient | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._last_answer = time.monotonic()
        """When a request last got a completion (or the client started)."""

    @property
    def has_key(self) -> bool:
        """Whether the environment variable `api_key_env` holds a key."""
        return self._api_key is not None

    async def __aenter__(self) -> ChatClient:
        timeout = httpx.Timeout(self.config.timeout_s, connect=self.config.connect_timeout_s)
        concurrency = self.config.concurrency
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self._http = httpx.AsyncClient(timeout=timeout, limits=limits)
        self._watcher = asyncio.create_task(self._report_long_waits())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()

    async def complete(self, messages: Messages, **params: Any) -> Completion:
        """The answer to one conversation; `params` (temperature, max_tokens, response_format, ...) go in the body.

        Raises ChatEndpointError when no request can succeed, ChatError when this one failed for good.
        """
        body: dict[str, Any] = {"messages": messages, **params}
        if self.config.model is not None:
            body["model"] = self.config.model
        async with self._semaphore:
            return await self._post(body)

    async def complete_all(self, conversations: list[Messages], **params: Any) -> list[Completion]:
        """Answers to every conversation, in order; the first failure cancels the rest and is raised."""
        tasks = [asyncio.create_task(self.complete(messages, **params)) for messages in conversations]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------ one request

    def _scrub(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def _delay(self, retry: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.config.max_retry_after_s)
        return min(self.config.backoff_s * 2 ** (retry - 1), self.config.max_backoff_s) * random.uniform(0.5, 1.0)

    async def _post(self, body: dict[str, Any]) -> Completion:
        attempts = self.config.max_retries + 1
        last = ""
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                self.stats.retries += 1
            self.stats.requests += 1
            outcome = await self._attempt(body)
            if isinstance(outcome, Completion):
                self._last_answer = time.monotonic()
                return outcome
            last, retry_after = outcome
            silent = time.monotonic() - self._last_answer
            if silent >= self.config.give_up_after_s:
                raise ChatEndpointError(
                    f"{self.url}: no request answered for {silent:.0f} s "
                    f"(give_up_after_s={self.config.give_up_after_s:g}); last: {last}; the endpoint is down, "
                    f"overloaded or slower than timeout_s={self.config.timeout_s:g}"
                )
            if attempt < attempts:
                delay = self._delay(attempt, retry_after)
                log.warning("%s: %s; attempt %d of %d in %.1f s", self.url, last, attempt + 1, attempts, delay)
                await asyncio.sleep(delay)
        raise ChatError(f"{self.url}: no answer after {attempts} attempt(s); last: {last}")

    async def _attempt(self, body: dict[str, Any]) -> Completion | tuple[str, float | None]:
        """A completion, or (why it failed, Retry-After seconds) for a failure worth retrying."""
        assert self._http is not None, "use ChatClient as `async with ChatClient(config) as client`"
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        ticket = next(self._tickets)
        self._waiting[ticket] = time.monotonic()
        try:
            response = await asyncio.wait_for(
                self._http.post(self.url, json=body, headers=headers), timeout=self.config.timeout_s
            )
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise ChatEndpointError(f"{self.url}: {self._scrub(str(exc))}") from None
        except (TimeoutError, httpx.TimeoutException) as exc:
            return f"timed out after {self.config.timeout_s:g} s ({type(exc).__name__})", None
        except httpx.TransportError as exc:
            return f"{type(exc).__name__}: {_one_line(self._scrub(str(exc))) or 'no detail'}", None
        finally:
            del self._waiting[ticket]
        return self._read(response)

    def _read(self, response: httpx.Response) -> Completion | tuple[str, float | None]:
        status = response.status_code
        detail = _one_line(self._scrub(response.text))
        if status == 200:
            try:
                answer = response.json()
                choice = answer["choices"][0]
                text = choice["message"]["content"] or ""
            except (ValueError, KeyError, IndexError, TypeError):
                return f"HTTP 200 with a body that is not a chat completion: {detail!r}", None
            usage = answer.get("usage") or {}
            self.stats.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            self.stats.completion_tokens += int(usage.get("completion_tokens") or 0)
            return Completion(str(text), choice.get("finish_reason"))
        if status in (401, 403):
            raise ChatEndpointError(
                f"{self.url} answered HTTP {status}: the API key in ${self.config.api_key_env} "
                "was refused (or is missing)"
            )
        if status == 404:
            raise ChatEndpointError(
                f"{self.url} answered HTTP 404 (wrong base_url, or unknown model {self.config.model!r}): {detail}"
            )
        if status in (408, 429) or status >= 500:
            return f"HTTP {status}: {detail}", retry_after_seconds(response.headers.get("retry-after"))
        raise ChatError(f"{self.url} answered HTTP {status}: {detail}")

    async def _report_long_waits(self) -> None:
        every = self.config.progress_after_s
        while True:
            await asyncio.sleep(every)
            now = time.monotonic()
            waits = [now - started for started in self._waiting.values() if now - started >= every]
            if waits:
                log.warning(
                    "%s: %d request(s) waiting for an answer, the longest for %.0f s (timeout %g s, then retried)",
                    self.url,
                    len(waits),
                    max(waits),
                    self.config.timeout_s,
                )


def run_chat(config: ChatClientConfig, conversations: list[Messages], **params: Any) -> list[Completion]:
    """Blocking `ChatClient.complete_all` for callers outside an event loop."""

    async def run() -> list[Completion]:
        async with ChatClient(config) as client:
            return await client.complete_all(conversations, **params)

    return asyncio.run(run())
