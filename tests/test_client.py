"""The Modellix HTTP client: every answer classified, limits enforced, the key never leaked."""

from __future__ import annotations

import email.utils
import hashlib
import io
import json
import logging
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar, cast

import anyio
import httpx
import pytest

from batchgen.api import (
    DEFAULT_BASE_URL,
    MAX_RETRY_AFTER,
    ApiError,
    AuthError,
    ConfigError,
    DownloadResult,
    ModellixClient,
    NotFound,
    PaymentRequired,
    ProtocolError,
    RateLimited,
    Rejected,
    ResultExpired,
    ServerError,
    Submitted,
    TransportFailure,
    api_key_from_env,
    parse_retry_after,
    resolve_base_url,
    validate_base_url,
)
from batchgen.errors import BatchgenError, ExitCode
from batchgen.simulator.app import Simulator, SimulatorConfig, serve_in_thread

CANARY = "sk-canary-4f1d9b7e2c6a"
BASE = "https://127.0.0.1:8443"
CDN = "https://127.0.0.2:9443"
SUBMIT_PATH = "/api/v1/openai/gpt-image-1.5/async"
BODY = {"prompt": "a red fox", "size": "1024x1024"}
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 2000 + b"IEND\xaeB`\x82"

Handler = Callable[[httpx.Request], httpx.Response]
E = TypeVar("E", bound=ApiError)

pytestmark = pytest.mark.anyio


# -- helpers ------------------------------------------------------------------------------------


def assert_no_key(exc: BaseException) -> None:
    """The canary key is in no message, repr, attribute or formatted traceback of *exc*."""
    texts = [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    texts += [repr(value) for value in vars(exc).values()]
    for text in texts:
        assert CANARY not in text


@pytest.fixture(autouse=True)
def _logs_never_contain_the_key(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every test runs with DEBUG logging (httpx, httpcore too) and is checked for the key."""
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "batchgen", "batchgen.api.client"):
        caplog.set_level(logging.DEBUG, logger=name)
    yield
    handler = logging.Formatter("%(name)s %(levelname)s %(message)s")
    for record in caplog.records:
        text = handler.format(record)
        assert CANARY not in text
    assert CANARY not in caplog.text


def make_client(handler: Handler, base_url: str = BASE, **kwargs: Any) -> ModellixClient:
    return ModellixClient(base_url, CANARY, transport=httpx.MockTransport(handler), **kwargs)


async def raises(cls: type[E], awaitable: Awaitable[Any]) -> E:
    with pytest.raises(cls) as info:
        await awaitable
    assert_no_key(info.value)
    return info.value


def answer(status: int, payload: Any = None, **kwargs: Any) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        if payload is None:
            return httpx.Response(status, **kwargs)
        return httpx.Response(status, json=payload, **kwargs)

    return handler


def accepted(task_id: str = "task-openai-abc123", url: str | None = None) -> dict[str, Any]:
    return {
        "code": 0,
        "message": "success",
        "data": {
            "status": "pending",
            "task_id": task_id,
            "model_id": "gpt-image-2",
            "get_result": {"method": "GET", "url": url or f"{BASE}/api/v1/tasks/{task_id}"},
        },
    }


def task(status: str, **data: Any) -> dict[str, Any]:
    return {"code": 0, "message": "success", "data": {"status": status, "task_id": "t1", **data}}


def resources(url: str = f"{CDN}/x.png", **extra: Any) -> dict[str, Any]:
    item = {"url": url, "type": "image", "width": 1024, "height": 1024, "format": "png"}
    item.update(extra)
    return {"resources": [item]}


async def submit_with(handler: Handler) -> Submitted:
    async with make_client(handler) as client:
        return await client.submit(SUBMIT_PATH, BODY)


async def submit_error(cls: type[E], handler: Handler) -> E:
    async with make_client(handler) as client:
        return await raises(cls, client.submit(SUBMIT_PATH, BODY))


async def poll_error(cls: type[E], handler: Handler) -> E:
    async with make_client(handler) as client:
        return await raises(cls, client.poll("t1"))


def error_json(code: int, message: str) -> dict[str, Any]:
    return {"code": code, "message": message}


# -- base URL and key rules ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://api.example.org",
        "https://api.example.org/",
        "http://127.0.0.1:8000",
        "http://127.10.0.5",
        "http://localhost:9000/",
        "http://[::1]:8080",
        "https://example.org/proxy/modellix/",
    ],
)
def test_https_and_loopback_base_urls_are_accepted_without_trailing_slash(url: str) -> None:
    assert validate_base_url(url) == url.rstrip("/")


@pytest.mark.parametrize(
    "url",
    [
        "http://api.example.org",
        "http://10.0.0.1:8000",
        "ftp://127.0.0.1",
        "api.example.org",
        "https://user:secret@api.example.org",
        "https://api.example.org/?x=1",
        "",
    ],
)
def test_insecure_or_malformed_base_urls_are_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_base_url(url)
    assert info.value.stops_run
    assert "secret" not in str(info.value)


def test_client_refuses_plain_http_to_a_remote_host_even_with_a_key() -> None:
    with pytest.raises(ConfigError):
        ModellixClient("http://api.example.org", CANARY)


def test_base_url_comes_from_cli_then_env_then_default() -> None:
    env = {"MODELLIX_BASE_URL": "http://127.0.0.1:7000/"}
    assert resolve_base_url("https://cli.example.org", env) == "https://cli.example.org"
    assert resolve_base_url(None, env) == "http://127.0.0.1:7000"
    assert resolve_base_url(None, {}) == DEFAULT_BASE_URL
    with pytest.raises(ConfigError):
        resolve_base_url(None, {"MODELLIX_BASE_URL": "http://example.org"})


def test_api_key_from_env_strips_and_treats_empty_as_missing() -> None:
    assert api_key_from_env({"MODELLIX_API_KEY": f"  {CANARY}\n"}) == CANARY
    assert api_key_from_env({"MODELLIX_API_KEY": "  "}) is None
    assert api_key_from_env({}) is None


def test_key_with_characters_unfit_for_a_header_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as info:
        ModellixClient(BASE, CANARY + "\u00e9x")
    assert_no_key(info.value)


def test_repr_of_client_shows_no_key() -> None:
    client = ModellixClient(BASE, CANARY)
    assert CANARY not in repr(client)
    assert "set" in repr(client)
    assert CANARY not in repr(vars(client))


# -- submit ---------------------------------------------------------------------------------


async def test_submit_posts_json_with_bearer_key_and_returns_the_task() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=accepted())

    submitted = await submit_with(handler)
    assert submitted == Submitted("task-openai-abc123", f"{BASE}/api/v1/tasks/task-openai-abc123")
    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == BASE + SUBMIT_PATH
    assert request.headers["authorization"] == f"Bearer {CANARY}"
    assert json.loads(request.content) == BODY
    assert request.headers["content-type"] == "application/json"


async def test_submit_keeps_a_base_url_path_prefix() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json=accepted())

    async with make_client(handler, base_url=BASE + "/proxy/") as client:
        await client.submit(SUBMIT_PATH, BODY)
    assert seen == [BASE + "/proxy" + SUBMIT_PATH]


async def test_submit_without_key_sends_no_authorization_header() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=accepted())

    async with ModellixClient(BASE, None, transport=httpx.MockTransport(handler)) as client:
        await client.submit(SUBMIT_PATH, BODY)
    assert "authorization" not in seen[0].headers


async def test_submit_ignores_a_poll_url_on_another_host() -> None:
    submitted = await submit_with(answer(200, accepted(url="https://evil.example/tasks/t")))
    assert submitted.poll_url is None


@pytest.mark.parametrize("path", ["api/v1/x", "//evil.example/x", "/api/../x", "/a?b=1"])
async def test_submit_refuses_a_malformed_submit_path(path: str) -> None:
    async with make_client(answer(200, accepted())) as client:
        err = await raises(ConfigError, client.submit(path, BODY))
    assert err.stops_run


async def test_400_rejects_with_the_provider_message() -> None:
    err = await submit_error(
        Rejected, answer(400, error_json(400, "Invalid parameters: size must be one of …"))
    )
    assert err.status == 400
    assert "Invalid parameters: size must be one of" in str(err)
    assert not err.retryable
    assert not err.ambiguous
    assert not err.stops_run


@pytest.mark.parametrize(("status", "cls"), [(401, AuthError), (402, PaymentRequired)])
async def test_401_and_402_stop_the_run(status: int, cls: type[ApiError]) -> None:
    err = await submit_error(cls, answer(status, error_json(status, "Unauthorized: nope")))
    assert err.stops_run
    assert not err.retryable
    assert not err.ambiguous
    assert err.status == status


async def test_404_on_submit_is_a_config_error_that_stops_the_run() -> None:
    err = await submit_error(NotFound, answer(404, error_json(404, "Not Found: model")))
    assert err.stops_run
    assert not err.retryable


async def test_404_on_poll_is_an_unknown_task_that_does_not_stop_the_run() -> None:
    err = await poll_error(NotFound, answer(404, error_json(404, "Not Found: task")))
    assert not err.stops_run
    assert not err.retryable


async def test_429_with_retry_after_seconds_is_rate_limited_and_not_ambiguous() -> None:
    err = await submit_error(
        RateLimited,
        answer(429, error_json(429, "Too Many Requests"), headers={"Retry-After": "7"}),
    )
    assert err.retry_after == 7.0
    assert err.retryable
    assert not err.ambiguous


async def test_429_with_retry_after_http_date_gives_the_remaining_seconds() -> None:
    when = email.utils.formatdate(time.time() + 3600, usegmt=True)
    err = await submit_error(RateLimited, answer(429, headers={"Retry-After": when}))
    assert err.retry_after is not None
    assert 3000 < err.retry_after <= 3601


async def test_429_falls_back_to_x_ratelimit_reset() -> None:
    err = await submit_error(RateLimited, answer(429, headers={"X-RateLimit-Reset": "12"}))
    assert err.retry_after == 12.0


def test_retry_after_parsing_is_defensive() -> None:
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(httpx.Headers({"Retry-After": "2.5"}), now=now) == 2.5
    assert parse_retry_after(httpx.Headers({"Retry-After": date}), now=now) == 30.0
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert parse_retry_after(httpx.Headers({"Retry-After": past}), now=now) == 0.0
    assert parse_retry_after(httpx.Headers({"Retry-After": "-5"}), now=now) == 0.0
    assert parse_retry_after(httpx.Headers({"Retry-After": "1e30"}), now=now) == MAX_RETRY_AFTER
    assert parse_retry_after(httpx.Headers({"Retry-After": "nan"}), now=now) is None
    assert parse_retry_after(httpx.Headers({"Retry-After": "soon"}), now=now) is None
    assert parse_retry_after(httpx.Headers({}), now=now) is None
    reset = {"X-RateLimit-Reset": str(int(now + 40))}
    assert parse_retry_after(httpx.Headers(reset), now=now) == 40.0
    reset_ms = {"X-RateLimit-Reset": str(int((now + 40) * 1000))}
    assert parse_retry_after(httpx.Headers(reset_ms), now=now) == 40.0
    both = {"Retry-After": "garbage", "X-RateLimit-Reset": "9"}
    assert parse_retry_after(httpx.Headers(both), now=now) == 9.0


@pytest.mark.parametrize("status", [500, 503, 504])
async def test_5xx_on_submit_is_retryable_and_ambiguous(status: int) -> None:
    err = await submit_error(
        ServerError,
        answer(status, error_json(status, "Internal Error"), headers={"Retry-After": "3"}),
    )
    assert err.retryable
    assert err.ambiguous
    assert err.status == status
    assert err.retry_after == 3.0


async def test_5xx_on_poll_is_retryable_and_never_ambiguous() -> None:
    err = await poll_error(ServerError, answer(503))
    assert err.retryable
    assert not err.ambiguous


async def test_html_502_from_a_proxy_is_a_server_error_with_a_short_clean_snippet() -> None:
    html = (
        "<html><head><title>502 Bad Gateway</title></head>\r\n<body>\x1b[31m<center>"
        "<h1>502 Bad Gateway</h1></center><hr><center>nginx</center>"
        + "x" * 5000
        + "</body></html>"
    )
    err = await submit_error(
        ServerError, answer(502, content=html.encode(), headers={"Content-Type": "text/html"})
    )
    assert err.status == 502
    assert err.ambiguous
    assert "502 Bad Gateway" in str(err)
    assert "<" not in str(err)
    assert "\x1b" not in str(err)
    assert "\n" not in str(err)
    assert len(str(err)) < 400


async def test_http_200_with_an_http_like_error_code_is_classified_by_the_code() -> None:
    err = await submit_error(
        RateLimited,
        answer(
            200, error_json(429, "Too Many Requests: concurrency"), headers={"Retry-After": "4"}
        ),
    )
    assert err.status == 429
    assert err.http_status == 200
    assert err.retry_after == 4.0
    assert not err.ambiguous
    err2 = await submit_error(Rejected, answer(200, error_json(400, "Invalid parameters: x")))
    assert "Invalid parameters: x" in str(err2)


async def test_http_200_with_an_unknown_error_code_is_a_protocol_error() -> None:
    err = await submit_error(ProtocolError, answer(200, error_json(1001, "quota glitch")))
    assert "1001" in str(err)
    assert "quota glitch" in str(err)
    assert err.http_status == 200


async def test_http_200_that_is_not_json_is_an_ambiguous_protocol_error_on_submit() -> None:
    err = await submit_error(ProtocolError, answer(200, content=b"<html>OK</html>"))
    assert err.ambiguous
    assert err.retryable
    assert "OK" in str(err)


@pytest.mark.parametrize(
    "payload",
    [
        [1, 2, 3],
        {"code": 0, "message": "success"},
        {"code": 0, "data": {"status": "pending"}},
        {"code": 0, "data": {"task_id": 12345}},
        {"code": 0, "data": "task-1"},
    ],
)
async def test_wrong_shaped_submit_answer_is_an_ambiguous_protocol_error(payload: Any) -> None:
    err = await submit_error(ProtocolError, answer(200, payload))
    assert err.ambiguous
    assert err.retryable


@pytest.mark.parametrize("task_id", ["../../etc/passwd", "a/b", "x" * 201, "", ".hidden", "a b"])
async def test_task_id_with_path_characters_or_too_long_is_refused(task_id: str) -> None:
    err = await submit_error(ProtocolError, answer(200, accepted(task_id=task_id)))
    assert err.ambiguous


async def test_huge_json_answer_is_refused_without_reading_it_all() -> None:
    chunks_read: list[int] = []

    async def stream() -> Any:
        for i in range(10_000):
            chunks_read.append(i)
            yield b"x" * 65536

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=stream())

    err = await submit_error(ProtocolError, handler)
    assert "larger than" in str(err)
    assert err.ambiguous
    assert len(chunks_read) < 40


async def test_declared_huge_content_length_is_refused_before_reading() -> None:
    err = await submit_error(
        ProtocolError, answer(200, content=b"{}", headers={"Content-Length": str(10**12)})
    )
    assert "larger than" in str(err)


async def test_deeply_nested_json_is_a_protocol_error_not_a_crash() -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    async with make_client(answer(200, content=body), max_response_bytes=2**20) as client:
        await raises(ProtocolError, client.submit(SUBMIT_PATH, BODY))


async def test_api_redirect_is_not_followed() -> None:
    err = await submit_error(
        ProtocolError, answer(307, headers={"Location": "https://evil.example/steal"})
    )
    assert not err.retryable


async def test_unserialisable_body_is_rejected_before_sending() -> None:
    async with make_client(answer(200, accepted())) as client:
        err = await raises(Rejected, client.submit(SUBMIT_PATH, {"x": float("nan")}))
    assert not err.ambiguous


# -- network failures -------------------------------------------------------------------------


def raising(exc: Exception) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


@pytest.mark.parametrize(
    ("exc", "ambiguous"),
    [
        (httpx.ConnectError("connection refused"), False),
        (httpx.ConnectTimeout("connect timed out"), False),
        (httpx.PoolTimeout("pool"), False),
        (httpx.ReadTimeout("read timed out"), True),
        (httpx.RemoteProtocolError("Server disconnected without sending a response."), True),
        (httpx.ReadError("connection reset by peer"), True),
        (httpx.WriteError("broken pipe"), True),
    ],
)
async def test_network_failures_on_submit_are_retryable_and_ambiguous_only_if_sent(
    exc: Exception, ambiguous: bool
) -> None:
    err = await submit_error(TransportFailure, raising(exc))
    assert err.retryable
    assert err.ambiguous is ambiguous
    assert err.status is None
    assert isinstance(err.__cause__, httpx.TransportError)


async def test_network_failure_on_poll_is_never_ambiguous() -> None:
    err = await poll_error(TransportFailure, raising(httpx.ReadTimeout("read timed out")))
    assert err.retryable
    assert not err.ambiguous


async def test_a_stalled_answer_hits_the_operation_deadline() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        await anyio.sleep(60)
        return httpx.Response(200, json=accepted())

    async with ModellixClient(
        BASE, CANARY, transport=httpx.MockTransport(handler), operation_timeout=0.05
    ) as client:
        err = await raises(TransportFailure, client.submit(SUBMIT_PATH, BODY))
    assert err.ambiguous
    assert err.retryable


# -- poll --------------------------------------------------------------------------------


async def test_poll_uses_the_canonical_url_on_the_base_url_with_a_quoted_id() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=task("processing", task_id="task:a=1"))

    async with make_client(handler) as client:
        status = await client.poll("task:a=1", poll_url="https://evil.example/api/v1/tasks/x")
    assert status.state == "running"
    assert status.raw_status == "processing"
    assert seen[0].url.host == "127.0.0.1"
    assert seen[0].url.raw_path == b"/api/v1/tasks/task%3Aa%3D1"
    assert seen[0].headers["authorization"] == f"Bearer {CANARY}"


async def test_poll_uses_a_same_origin_get_result_url() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json=task("pending"))

    async with make_client(handler) as client:
        await client.poll("t1", poll_url=f"{BASE}/api/v2/tasks/t1")
    assert seen == [f"{BASE}/api/v2/tasks/t1"]


@pytest.mark.parametrize("status", ["success", "completed", "succeeded", "SUCCESS"])
async def test_success_statuses_return_resources(status: str) -> None:
    payload = task(status, duration=10766, result=resources())
    async with make_client(answer(200, payload)) as client:
        result = await client.poll("t1")
    assert result.state == "success"
    assert result.duration_ms == 10766
    (res,) = result.resources
    assert res.url == f"{CDN}/x.png"
    assert (res.width, res.height, res.format, res.type) == (1024, 1024, "png", "image")
    assert result.raw == payload


async def test_resource_format_is_sanitised_for_use_as_a_file_extension() -> None:
    payload = task("success", result=resources(format="../../png", width="big", height=-3))
    async with make_client(answer(200, payload)) as client:
        result = await client.poll("t1")
    res = result.resources[0]
    assert res.format is None
    assert res.width is None
    assert res.height is None


async def test_success_without_a_usable_result_url_is_a_protocol_error() -> None:
    payload = task("success", result=resources(url="file:///etc/passwd"))
    err = await poll_error(ProtocolError, answer(200, payload))
    assert err.retryable
    assert not err.ambiguous


@pytest.mark.parametrize("status", ["failed", "error", "canceled", "cancelled"])
async def test_failure_statuses_are_failed(status: str) -> None:
    async with make_client(answer(200, task(status, error="content policy violation"))) as client:
        result = await client.poll("t1")
    assert result.state == "failed"
    assert result.error == "content policy violation"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"error": {"code": "x", "message": "nested error"}}, "nested error"),
        ({"result": {"error": "result error"}}, "result error"),
        ({"message": "data message"}, "data message"),
        ({"fail_reason": "reason here"}, "reason here"),
    ],
)
async def test_failure_message_is_the_most_specific_one_found(
    data: dict[str, Any], expected: str
) -> None:
    async with make_client(answer(200, task("failed", **data))) as client:
        result = await client.poll("t1")
    assert result.error == expected


async def test_failure_without_a_message_keeps_the_raw_json_truncated() -> None:
    payload = task("failed", extra="y" * 5000)
    async with make_client(answer(200, payload)) as client:
        result = await client.poll("t1")
    assert result.error is not None
    assert '"status": "failed"' in result.error
    assert len(result.error) < 700
    assert result.raw == payload


@pytest.mark.parametrize("status", ["pending", "processing", "queued", "weird-new-state", None, 7])
async def test_unknown_statuses_count_as_running(status: Any) -> None:
    async with make_client(answer(200, task(status))) as client:
        result = await client.poll("t1")
    assert result.state == "running"


async def test_poll_answer_about_another_task_is_a_protocol_error() -> None:
    payload = {"code": 0, "data": {"status": "success", "task_id": "other"}}
    await poll_error(ProtocolError, answer(200, payload))


async def test_poll_refuses_an_invalid_task_id_without_sending() -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(200, json=task("pending"))

    async with make_client(handler) as client:
        err = await raises(ProtocolError, client.poll("../admin"))
    assert not err.retryable
    assert calls == []


# -- download -----------------------------------------------------------------------------


async def download_with(handler: Handler, url: str = f"{CDN}/x.png", **kwargs: Any) -> Any:
    buffer = io.BytesIO()
    async with make_client(handler, **kwargs) as client:
        result = await client.download(url, buffer)
    return result, buffer.getvalue()


async def download_error(
    cls: type[E], handler: Handler, url: str = f"{CDN}/x.png", **kwargs: Any
) -> E:
    async with make_client(handler, **kwargs) as client:
        return await raises(cls, client.download(url, io.BytesIO()))


async def test_download_streams_counts_and_hashes_without_sending_the_key_to_a_cdn() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=PNG, headers={"Content-Type": "image/png"})

    result, data = await download_with(handler)
    assert result == DownloadResult(len(PNG), hashlib.sha256(PNG).hexdigest(), "image/png")
    assert data == PNG
    assert "authorization" not in seen[0].headers


async def test_download_from_the_api_origin_sends_the_key() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=PNG)

    await download_with(handler, url=f"{BASE}/files/x.png")
    assert seen[0].headers["authorization"] == f"Bearer {CANARY}"


@pytest.mark.parametrize("status", [403, 404, 410])
async def test_download_gone_is_result_expired(status: int) -> None:
    err = await download_error(ResultExpired, answer(status, content=b"<Error>Expired</Error>"))
    assert err.status == status
    assert not err.retryable


async def test_download_5xx_is_a_retryable_server_error() -> None:
    err = await download_error(ServerError, answer(502, content=b"bad gateway"))
    assert err.retryable
    assert not err.ambiguous


async def test_download_other_4xx_is_a_protocol_error() -> None:
    err = await download_error(ProtocolError, answer(418, content=b"teapot"))
    assert not err.retryable


async def test_download_over_the_cap_is_refused_by_content_length() -> None:
    err = await download_error(
        ProtocolError,
        answer(200, content=b"x" * 10, headers={"Content-Length": str(51 * 2**20)}),
    )
    assert "limit" in str(err)


async def test_download_over_the_cap_is_refused_even_when_content_length_lies() -> None:
    async def stream() -> Any:
        for _ in range(100):
            yield b"x" * 4096

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=stream(), headers={"Content-Length": "100"})

    err = await download_error(ProtocolError, handler, max_download_bytes=64 * 1024)
    assert "limit" in str(err)
    assert not err.retryable


async def test_download_shorter_than_content_length_is_a_transport_failure() -> None:
    err = await download_error(
        TransportFailure,
        answer(200, content=PNG[:100], headers={"Content-Length": str(len(PNG))}),
    )
    assert err.retryable


async def test_download_dropped_mid_body_is_a_transport_failure() -> None:
    async def stream() -> Any:
        yield PNG[:100]
        raise httpx.RemoteProtocolError("peer closed connection without sending complete body")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=stream())

    err = await download_error(TransportFailure, handler)
    assert err.retryable
    assert not err.ambiguous


async def test_download_follows_https_redirects_and_drops_the_key_off_origin() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "127.0.0.1":
            return httpx.Response(302, headers={"Location": f"{CDN}/signed/x.png?sig=abc"})
        return httpx.Response(200, content=PNG)

    result, data = await download_with(handler, url=f"{BASE}/files/x.png")
    assert data == PNG
    assert result.bytes == len(PNG)
    assert [r.url.host for r in seen] == ["127.0.0.1", "127.0.0.2"]
    assert seen[0].headers["authorization"] == f"Bearer {CANARY}"
    assert "authorization" not in seen[1].headers


async def test_download_refuses_a_redirect_to_plain_http_on_a_remote_host() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(301, headers={"Location": "http://203.0.113.7/x.png"})

    err = await download_error(ProtocolError, handler)
    assert "insecure" in str(err)
    assert not err.retryable
    assert len(seen) == 1


async def test_download_refuses_a_plain_http_result_url_on_a_remote_host() -> None:
    err = await download_error(ProtocolError, answer(200, content=PNG), url="http://203.0.113.7/x")
    assert not err.retryable


async def test_download_allows_plain_http_on_loopback() -> None:
    result, _ = await download_with(answer(200, content=PNG), url="http://127.0.0.1:9/x.png")
    assert result.bytes == len(PNG)


async def test_download_gives_up_after_three_redirects() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(302, headers={"Location": f"/hop{len(seen)}"})

    err = await download_error(ProtocolError, handler)
    assert "redirects" in str(err)
    assert len(seen) == 4


# -- the key never leaks ------------------------------------------------------------------


async def test_a_server_echoing_the_key_in_errors_does_not_leak_it() -> None:
    def echo(status: int) -> Handler:
        def handler(request: httpx.Request) -> httpx.Response:
            auth = request.headers.get("authorization", "")
            return httpx.Response(status, json=error_json(status, f"bad key {auth}"))

        return handler

    for status, cls in [(400, Rejected), (401, AuthError), (500, ServerError)]:
        err = await submit_error(cls, echo(status))
        assert "[redacted]" in str(err)

    def html_echo(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, content=request.headers["authorization"].encode())

    err = await submit_error(ServerError, html_echo)
    assert "[redacted]" in str(err)

    def failed_echo(request: httpx.Request) -> httpx.Response:
        auth = request.headers["authorization"]
        return httpx.Response(200, json=task("pending", note=auth))

    async with make_client(failed_echo) as client:
        polled = await client.poll("t1")
    assert polled.state == "running"  # the raw answer is returned as is; it is the server's


async def test_transport_errors_carrying_the_request_do_not_leak_the_key() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadError("reset", request=request)

    err = await submit_error(TransportFailure, handler)
    assert err.__cause__ is not None
    assert_no_key(err.__cause__)


async def test_submit_poll_download_through_debug_logging_never_log_the_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(200, json=accepted("t1"))
        if request.url.path.startswith("/api/v1/tasks/"):
            return httpx.Response(200, json=task("success", result=resources(f"{BASE}/f.png")))
        return httpx.Response(200, content=PNG)

    async with make_client(handler) as client:
        submitted = await client.submit(SUBMIT_PATH, BODY)
        status = await client.poll(submitted.task_id, submitted.poll_url)
        await client.download(status.resources[0].url, io.BytesIO())
    assert any(r.name.startswith("httpx") for r in caplog.records)
    assert CANARY not in caplog.text


# -- against the project's simulator ------------------------------------------------------------


class FakeClock:
    """The simulator's clock, moved by hand (no wall-clock waits)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def in_process(sim: Simulator) -> httpx.ASGITransport:
    """The simulator as an httpx transport (cast: its ASGI signature is a narrower Mapping)."""
    return httpx.ASGITransport(app=cast(Any, sim))


async def run_one_task(client: ModellixClient, clock: FakeClock) -> tuple[Any, bytes]:
    submitted = await client.submit(SUBMIT_PATH, {"prompt": "a lighthouse"})
    first = await client.poll(submitted.task_id, submitted.poll_url)
    assert first.state == "running"
    clock.now += 3600.0
    done = await client.poll(submitted.task_id, submitted.poll_url)
    assert done.state == "success", done.raw
    buffer = io.BytesIO()
    result = await client.download(done.resources[0].url, buffer)
    return result, buffer.getvalue()


async def test_submit_poll_download_against_the_in_process_simulator() -> None:
    clock = FakeClock()
    sim = Simulator(SimulatorConfig(), clock=clock)
    transport = in_process(sim)
    async with ModellixClient("http://127.0.0.1", "sim-key", transport=transport) as client:
        result, data = await run_one_task(client, clock)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert result.bytes == len(data)
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.content_type == "image/png"
    stats = sim.stats()
    assert stats["submissions"]["accepted"] == 1
    assert stats["downloads"]["total"] == 1


async def test_simulator_faults_are_classified() -> None:
    cases: list[tuple[SimulatorConfig, type[ApiError], bool]] = [
        (SimulatorConfig(api_key=CANARY, drop_rate=1.0), TransportFailure, True),
        (SimulatorConfig(api_key=CANARY, error_500_rate=1.0), ServerError, True),
        (SimulatorConfig(api_key=CANARY, error_503_rate=1.0, retry_after=2.0), ServerError, True),
        (SimulatorConfig(api_key=CANARY, error_429_rate=1.0, retry_after=2.0), RateLimited, False),
        (SimulatorConfig(api_key=CANARY, balance=0), PaymentRequired, False),
        (SimulatorConfig(api_key="another-key"), AuthError, False),
    ]
    for config, cls, ambiguous in cases:
        transport = in_process(Simulator(config, clock=FakeClock()))
        async with ModellixClient("http://127.0.0.1", CANARY, transport=transport) as client:
            err = await raises(cls, client.submit(SUBMIT_PATH, {"prompt": "x"}))
        assert err.ambiguous is ambiguous, (config, err)
        if cls in (ServerError, RateLimited) and err.status != 500:
            assert err.retry_after == 2.0


async def test_simulator_expired_result_url_is_result_expired() -> None:
    clock = FakeClock()
    sim = Simulator(SimulatorConfig(expired_rate=1.0), clock=clock)
    transport = in_process(sim)
    async with ModellixClient("http://127.0.0.1", "sim-key", transport=transport) as client:
        with pytest.raises(ResultExpired) as info:
            await run_one_task(client, clock)
    assert info.value.status == 410


async def test_unknown_task_on_the_simulator_is_not_found() -> None:
    transport = in_process(Simulator(SimulatorConfig(), clock=FakeClock()))
    async with ModellixClient("http://127.0.0.1", "sim-key", transport=transport) as client:
        err = await raises(NotFound, client.poll("task-does-not-exist"))
    assert not err.stops_run


async def test_real_sockets_with_debug_logging_never_log_the_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    sim = Simulator(SimulatorConfig(api_key=CANARY), clock=clock)
    with serve_in_thread(sim) as base_url:
        async with ModellixClient(base_url, CANARY, max_connections=2) as client:
            result, data = await run_one_task(client, clock)
        async with ModellixClient(base_url, CANARY + "-wrong") as client:
            await raises(AuthError, client.submit(SUBMIT_PATH, {"prompt": "x"}))
    assert result.bytes == len(data) > 0
    assert any(record.name.startswith(("httpcore", "httpx")) for record in caplog.records)
    assert CANARY not in caplog.text


async def test_loopback_requests_never_go_through_a_proxy_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A proxy that refuses connections: any request sent through it would fail.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    clock = FakeClock()
    sim = Simulator(SimulatorConfig(), clock=clock)
    with serve_in_thread(sim) as base_url:
        async with ModellixClient(base_url, "sim-key") as client:
            result, data = await run_one_task(client, clock)
    assert result.bytes == len(data) > 0


def test_api_errors_carry_the_exit_code_a_command_ends_with() -> None:
    assert issubclass(ApiError, BatchgenError)
    assert AuthError("x").exit_code == ExitCode.STOPPED
    assert PaymentRequired("x").exit_code == ExitCode.STOPPED
    assert ConfigError("x").exit_code == ExitCode.STOPPED
    assert TransportFailure("x").exit_code == ExitCode.STOPPED
    assert Rejected("x").exit_code == ExitCode.JOBS_FAILED
    assert ResultExpired("x").exit_code == ExitCode.JOBS_FAILED
    assert NotFound("x").exit_code == ExitCode.JOBS_FAILED  # an unknown task
    assert NotFound("x", stops_run=True).exit_code == ExitCode.STOPPED  # an unknown model
