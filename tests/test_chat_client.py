"""The shared OpenAI-compatible chat client against the local stand-in (pipelines/openai_standin.py),
which plays a paid API: each fault a real endpoint shows, one after another, then a refused connection."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time

import pytest

from medo1.chat_client import (
    ChatClient,
    ChatClientConfig,
    ChatEndpointError,
    ChatError,
    retry_after_seconds,
    run_chat,
)
from pipelines.openai_standin import StandIn
from tests.conftest import free_port

KEY = "sk-standin-SECRET-4f0c2a9e71"
QUESTION = [{"role": "user", "content": "Q1: which option?"}]


@pytest.fixture(autouse=True)
def api_key_env(monkeypatch):
    monkeypatch.setenv("MEDO1_CHAT_TEST_KEY", KEY)


def client_config(base_url: str, **extra) -> ChatClientConfig:
    values = {"base_url": base_url, "model": "stand-in", "api_key_env": "MEDO1_CHAT_TEST_KEY", "backoff_s": 0.01}
    return ChatClientConfig(**(values | extra))


def test_each_fault_is_retried_and_retry_after_is_honoured_in_both_forms(caplog):
    faults = ["429-seconds", "429-date", "500", "malformed-json", "hang"]
    caplog.set_level(logging.INFO, logger="medo1.chat_client")
    with StandIn(api_key=KEY, mcq_answers={"Q1": "C"}, faults=faults, retry_after_s=1.0, hang_s=5.0) as server:
        config = client_config(server.base_url, max_retries=5, timeout_s=0.5, progress_after_s=0.2)
        started = time.monotonic()
        [answer] = run_chat(config, [QUESTION], max_tokens=32, temperature=0.0)
        elapsed = time.monotonic() - started

    assert answer.text.endswith("The answer is C") and answer.finish_reason == "stop"
    assert [fault for _, fault in server.fault_log] == faults
    assert len(server.bodies) == 6  # five faults, then the answer
    sent = {"messages": QUESTION, "max_tokens": 32, "temperature": 0.0, "model": "stand-in"}
    assert all(body == sent for body in server.bodies)
    arrivals = [t for t, _ in server.fault_log]
    assert arrivals[1] - arrivals[0] >= 0.9  # Retry-After: 1
    assert arrivals[2] - arrivals[1] >= 0.9  # Retry-After: <HTTP date, 1 s ahead rounded up>
    assert arrivals[3] - arrivals[2] < 0.5  # no Retry-After: the short backoff
    assert elapsed < 4.5  # the hang was cut at the 0.5 s timeout, not waited out (5 s)

    retries = [r.getMessage() for r in caplog.records if "attempt" in r.getMessage()]
    assert [m.split("; attempt ")[1].split(" in ")[0] for m in retries] == [f"{k} of 6" for k in range(2, 7)]
    assert "HTTP 429" in retries[0] and "HTTP 429" in retries[1] and "HTTP 500" in retries[2]
    assert "not a chat completion" in retries[3] and "timed out after 0.5 s" in retries[4]
    assert any("1 request(s) waiting for an answer" in r.getMessage() for r in caplog.records)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "Bearer ***" in logged and KEY not in logged  # the 500 page echoed the header


def test_retry_after_is_capped():
    with StandIn(api_key=KEY, mcq_answers={"Q1": "A"}, faults=["429-seconds"], retry_after_s=3600) as server:
        started = time.monotonic()
        [answer] = run_chat(client_config(server.base_url, max_retry_after_s=0.2), [QUESTION])
        assert time.monotonic() - started < 2
    assert answer.text.endswith("The answer is A")


def test_refused_connection_is_retried_then_fails_in_one_line(caplog):
    caplog.set_level(logging.WARNING, logger="medo1.chat_client")
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there

    async def ask() -> ChatClient:
        async with ChatClient(client_config(url, max_retries=2)) as client:
            with pytest.raises(ChatError) as error:
                await client.complete(QUESTION)
        assert not isinstance(error.value, ChatEndpointError)
        message = str(error.value)
        assert "\n" not in message and "ConnectError" in message and "after 3 attempt(s)" in message
        return client

    client = asyncio.run(ask())
    assert (client.stats.requests, client.stats.retries) == (3, 2)
    assert sum("ConnectError" in r.getMessage() for r in caplog.records) == 2


def test_retries_used_up_give_one_line_without_the_key():
    with StandIn(api_key=KEY, mcq_answers={}, faults=["500", "500"]) as server:
        with pytest.raises(ChatError) as error:
            run_chat(client_config(server.base_url, max_retries=1), [QUESTION])
    message = str(error.value)
    assert "HTTP 500" in message and "after 2 attempt(s)" in message and "\n" not in message
    assert KEY not in message and "Bearer ***" in message


def test_refusals_that_retrying_cannot_fix_stop_at_once(monkeypatch):
    with StandIn(api_key=KEY, mcq_answers={}) as server:
        with pytest.raises(ChatEndpointError, match="HTTP 404"):
            run_chat(client_config(server.base_url + "/wrong"), [QUESTION])
        monkeypatch.setenv("MEDO1_CHAT_TEST_KEY", KEY + "-revoked")
        with pytest.raises(ChatEndpointError, match=r"HTTP 401: the API key in \$MEDO1_CHAT_TEST_KEY") as error:
            run_chat(client_config(server.base_url), [QUESTION])
        assert KEY not in str(error.value)
        assert server.unauthorized == 1  # not retried
    with pytest.raises(ChatEndpointError, match="not an http"):
        ChatClient(client_config("localhost:8000/v1"))


def test_complete_all_keeps_order_under_the_concurrency_limit():
    questions = {f"Q{i}": "ABCDE"[i % 5] for i in range(10)}
    with StandIn(api_key=KEY, mcq_answers=questions) as server:
        answers = run_chat(
            client_config(server.base_url, concurrency=3), [[{"role": "user", "content": q}] for q in questions]
        )
    assert [a.text[-1] for a in answers] == list(questions.values())


def test_retry_after_header_forms():
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("-3") == 0.0
    ahead = retry_after_seconds(email.utils.formatdate(time.time() + 30, usegmt=True))
    assert ahead is not None and 28 <= ahead <= 30
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past: at once
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


def test_an_endpoint_that_never_answers_stops_every_request_after_give_up_after_s():
    """Issue 28: eval's old defaults waited 6 x 600 s per request on a silent endpoint, translate 6 x 120 s per record.
    Once nothing has been answered for give_up_after_s, the next failed attempt ends the run in one line."""
    with StandIn(api_key=KEY, mcq_answers={"Q": "A"}, faults=["hang"] * 40, hang_s=5) as server:
        started = time.monotonic()
        with pytest.raises(ChatEndpointError) as error:
            run_chat(
                client_config(server.base_url, timeout_s=0.3, max_retries=50, give_up_after_s=1.0, concurrency=4),
                [QUESTION] * 8,
            )
        elapsed = time.monotonic() - started
    message = str(error.value)
    assert "no request answered for" in message and "give_up_after_s=1" in message and "timed out" in message
    assert "\n" not in message and KEY not in message
    assert elapsed < 10, elapsed  # 51 attempts of 0.3 s each per request would take over 15 s


def test_the_stages_wait_minutes_not_an_hour_by_default():
    from medo1.data.translate import TranslateConfig
    from medo1.eval.config import EvalConfig

    def worst_case_per_request(config) -> float:
        return (config.max_retries + 1) * config.timeout_s

    evaluation = EvalConfig(endpoint="http://e/v1", benchmarks={"b": "b.json"})
    translation = TranslateConfig(input="i.json", output="o.jsonl", target_language="Japanese")
    assert worst_case_per_request(evaluation) <= 15 * 60 and worst_case_per_request(translation) <= 6 * 60
    assert evaluation.give_up_after_s == translation.give_up_after_s == 300
