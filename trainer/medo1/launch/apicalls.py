"""Every Kubernetes API call the launcher and `medo1 doctor` make is bounded in time.

The kubernetes client sends a request with no timeout unless each call passes `_request_timeout`, and the
Kubeflow SDKs pass none: against an API server that accepts the connection and never answers, a launch
waited forever (and ignored SIGTERM while its cleanup waited too). `bound_requests` gives every request of
one ApiClient a connect and a read timeout unless the call sets its own (a followed log stream sets an
unbounded read: a quiet training log is not a dead server), and lets urllib3 retry a failed connect but
not a read that timed out, so one call lasts at most about `read_s` plus the connect timeout.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable, Iterator
from typing import Any

CONNECT_TIMEOUT_S = 10.0
DEFAULT_REQUEST_TIMEOUT_S = 30.0
FOLLOW_TIMEOUT = (CONNECT_TIMEOUT_S, None)
"""A streamed log: connect bounded, reads not (the stream is stopped by shutting its socket)."""


def _bounds(read_s: float) -> tuple[float, float]:
    """A request's (connect, read) timeout for a read timeout of `read_s`."""
    return (min(CONNECT_TIMEOUT_S, read_s), read_s)


def _timeout_defaulted(send: Callable[..., Any], timeout: Callable[[], tuple]) -> Callable[..., Any]:
    """`send` (a RESTClientObject's `request`) with `_request_timeout` defaulting to `timeout()`; its signature
    (kubernetes/client/rest.py), so that a caller passing the timeout by position still sets it."""

    def request(
        method,
        url,
        query_params=None,
        headers=None,
        body=None,
        post_params=None,
        _preload_content=True,
        _request_timeout=None,
    ):
        bound = _request_timeout or timeout()
        return send(method, url, query_params, headers, body, post_params, _preload_content, bound)

    return request


def bound_requests(api_client: Any, read_s: float = DEFAULT_REQUEST_TIMEOUT_S) -> Any:
    """Give every request of the kubernetes `api_client` a (connect, read) timeout; returns it. Idempotent:
    a second call only changes the read timeout."""
    rest = api_client.rest_client
    if getattr(rest, "medo1_timeout", None) is None:
        rest.request = _timeout_defaulted(rest.request, lambda: rest.medo1_timeout)
        rest.pool_manager.connection_pool_kw["retries"] = _retries()
        rest.pool_manager.clear()  # pools made before this take the new retries when made again
    rest.medo1_timeout = _bounds(read_s)
    return api_client


def _retries() -> Any:
    """urllib3's retries for a bounded client: a refused connect or a dropped (stale keep-alive) connection is
    tried again, twice; a read that timed out is not (the server got the request and did not answer: another
    try would wait as long again)."""
    import urllib3
    from urllib3.exceptions import MaxRetryError, ReadTimeoutError

    class Retries(urllib3.Retry):
        def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
            if isinstance(error, ReadTimeoutError):
                raise MaxRetryError(_pool, url, error) from error
            return super().increment(method, url, response, error, _pool, _stacktrace)

    return Retries(total=3, connect=2, read=2, redirect=3, status=0)


def describe_unanswered(exc: BaseException, host: str) -> str | None:
    """One line for a request the API server at `host` did not answer (a timeout, a refused or dropped
    connection), or None when `exc` is something else. The Kubeflow SDKs re-raise it as a RuntimeError
    (`__context__` holds urllib3's error)."""
    from urllib3.exceptions import HTTPError, MaxRetryError, NewConnectionError, ProtocolError, ReadTimeoutError

    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, HTTPError):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return None
    if isinstance(cause, MaxRetryError) and cause.reason is not None:
        cause = cause.reason
    if isinstance(cause, ReadTimeoutError):
        waited = re.search(r"read timeout=([0-9.]+)", str(cause))
        return f"the Kubernetes API server at {host} did not answer within {waited[1] if waited else '?'} s"
    if isinstance(cause, NewConnectionError):
        return f"the Kubernetes API server at {host} could not be reached ({str(cause).rsplit(': ', 1)[-1]})"
    if isinstance(cause, ProtocolError):
        return f"the Kubernetes API server at {host} dropped the connection"
    return f"the Kubernetes API server at {host} did not answer ({type(cause).__name__})"


@contextlib.contextmanager
def bounded_construction(read_s: float = DEFAULT_REQUEST_TIMEOUT_S) -> Iterator[None]:
    """While an SDK client is made: the requests its constructor sends are bounded too (the Kubeflow SDK's
    TrainerClient reads a ConfigMap before `bound_requests` can reach its ApiClient)."""
    from kubernetes.client.rest import RESTClientObject

    unbounded, made = RESTClientObject.request, RESTClientObject.__init__
    timeout = _bounds(read_s)

    def request(self, *args, **kwargs):
        return _timeout_defaulted(functools.partial(unbounded, self), lambda: timeout)(*args, **kwargs)

    def init(self, *args, **kwargs):
        made(self, *args, **kwargs)
        self.pool_manager.connection_pool_kw["retries"] = _retries()

    RESTClientObject.request, RESTClientObject.__init__ = request, init
    try:
        yield
    finally:
        RESTClientObject.request, RESTClientObject.__init__ = unbounded, made
