"""Self-tests of the independent API server (tests/independent_api) with plain httpx.

The server is the yardstick the runner is measured against, so its own shapes,
auth, expiry and fault rates are pinned here.
"""

from __future__ import annotations

import contextlib
import email.utils
import ssl
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

try:  # `python -m pytest` from the checkout, or tests/ as a package
    from tests.independent_api import server as srv
    from tests.independent_api.imagecheck import ImageError, check_image, check_jpeg, check_png
except ModuleNotFoundError:  # plain `pytest`: tests/ itself is on sys.path
    from independent_api import server as srv  # type: ignore[no-redef]
    from independent_api.imagecheck import (  # type: ignore[no-redef]
        ImageError,
        check_image,
        check_jpeg,
        check_png,
    )

MODEL_PATH = "/api/v1/openai/gpt-image-1.5/async"
# One TLS context for every client: building one per client costs more than the requests
# (everything here is plain http on loopback anyway).
_TLS = ssl.create_default_context()


@pytest.fixture
def cdn() -> Iterator[httpx.Client]:
    """A client without any key, as a download from the result host should be."""
    with httpx.Client(verify=_TLS, timeout=10) as client:
        yield client


@pytest.fixture
def clock() -> srv.ManualClock:
    return srv.ManualClock()


def _client(server: srv.ServerHandle, *, key: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key or server.api_key}"}
    return httpx.Client(base_url=server.base_url, headers=headers, timeout=10, verify=_TLS)


def _submit(client: httpx.Client, body: Any) -> httpx.Response:
    return client.post(MODEL_PATH, json=body)


@pytest.fixture
def quiet_server(clock: srv.ManualClock) -> Iterator[srv.ServerHandle]:
    with srv.running_server(seed=7, clock=clock, result_ttl=30.0) as server:
        yield server


def test_submit_answers_like_the_provider_example(quiet_server: srv.ServerHandle) -> None:
    with _client(quiet_server) as client:
        answer = _submit(client, {"prompt": "a lighthouse"})
    assert answer.status_code == 200
    payload = answer.json()
    assert payload["code"] == 0
    assert payload["message"] == "success"
    data = payload["data"]
    assert data["status"] == "pending"
    assert data["task_id"].startswith("task-openai-")
    assert data["model_id"] != "gpt-image-1.5"  # like the provider's own example
    assert data["get_result"] == {
        "method": "GET",
        "url": f"{quiet_server.base_url}/api/v1/tasks/{data['task_id']}",
    }


def test_task_moves_through_pending_processing_to_a_success_word_with_a_cdn_png(
    quiet_server: srv.ServerHandle, clock: srv.ManualClock, cdn: httpx.Client
) -> None:
    with _client(quiet_server) as client:
        data = _submit(client, {"prompt": "a fox", "size": "1536x1024"}).json()["data"]
        poll_url = data["get_result"]["url"]
        first = client.get(poll_url).json()["data"]
        clock.advance(10.0)
        final = client.get(poll_url).json()["data"]
    assert first["status"] in ("pending", "processing")
    assert final["status"] in srv.SUCCESS_WORDS
    (resource,) = final["result"]["resources"]
    assert (resource["width"], resource["height"], resource["format"]) == (1536, 1024, "png")
    assert resource["url"].startswith(quiet_server.cdn_base_url + "/")
    assert quiet_server.cdn_base_url != quiet_server.base_url
    downloaded = cdn.get(resource["url"])  # no key: the CDN does not want one
    assert downloaded.status_code == 200
    assert downloaded.headers["content-type"] == "image/png"
    assert check_png(downloaded.content) == (1536, 1024)
    assert quiet_server.stats["downloads"] == 1
    assert quiet_server.stats["cdn_requests_with_authorization"] == 0


def test_every_result_image_is_complete_and_distinct_per_task(cdn: httpx.Client) -> None:
    clock = srv.ManualClock()
    with (
        srv.running_server(seed=3, clock=clock, jpeg_rate=0.5) as server,
        _client(server) as client,
    ):
        urls = []
        for i, background in enumerate(("transparent", "opaque", "auto") * 2):
            body = {"prompt": f"cup {i}", "background": background, "size": "1024x1536"}
            urls.append(_submit(client, body).json()["data"]["get_result"]["url"])
        clock.advance(10.0)
        contents = []
        for url in urls:
            (resource,) = client.get(url).json()["data"]["result"]["resources"]
            content = cdn.get(resource["url"]).content
            kind, width, height = check_image(content)
            assert (kind, width, height) == (resource["format"], 1024, 1536)
            contents.append(content)
    assert len(set(contents)) == len(contents)
    assert {check_image(c)[0] for c in contents} == {"png", "jpeg"}


def test_image_checks_refuse_truncated_or_corrupt_files() -> None:
    png = srv.png_bytes(64, 32, (1, 2, 3), text="x")
    jpeg = srv.jpeg_bytes(64, 32, 200, comment="x")
    assert check_png(png) == (64, 32)
    assert check_jpeg(jpeg) == (64, 32)
    for broken in (png[:-1], png[:40], png[:30] + b"\x00" + png[31:]):
        with pytest.raises(ImageError):
            check_png(broken)
    for broken in (jpeg[:-2], jpeg[:-3] + b"\xff\xd9"):
        with pytest.raises(ImageError):
            check_jpeg(broken)


@pytest.mark.parametrize("grey", [0, 1, 127, 129, 255])
def test_jpeg_writer_makes_decodable_files_for_every_level(grey: int) -> None:
    assert check_jpeg(srv.jpeg_bytes(120, 64, grey)) == (120, 64)


def test_api_host_requires_the_bearer_key_but_cdn_does_not(
    quiet_server: srv.ServerHandle, clock: srv.ManualClock, cdn: httpx.Client
) -> None:
    with httpx.Client(base_url=quiet_server.base_url, verify=_TLS) as anonymous:
        missing = anonymous.post(MODEL_PATH, json={"prompt": "x"})
    with _client(quiet_server, key="wrong") as wrong:
        bad = _submit(wrong, {"prompt": "x"})
    for answer in (missing, bad):
        assert answer.status_code == 401
        assert answer.json()["code"] == 401
        assert answer.json()["message"].startswith("Unauthorized: ")
    with _client(quiet_server) as client:
        task_id = _submit(client, {"prompt": "x"}).json()["data"]["task_id"]
        clock.advance(10.0)
        with _client(quiet_server, key="wrong") as wrong:
            assert wrong.get(f"/api/v1/tasks/{task_id}").status_code == 401
        url = client.get(f"/api/v1/tasks/{task_id}").json()["data"]["result"]["resources"][0]
    assert cdn.get(url["url"]).status_code == 200
    assert quiet_server.stats["accepted_tasks"] == 1


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "prompt is required"),
        ({"prompt": ""}, "between 1 and 32000"),
        ({"prompt": "x" * 32001}, "between 1 and 32000"),
        ({"prompt": 5}, "must be a string"),
        ({"prompt": "x", "size": "1024x1000"}, "size must be one of"),
        ({"prompt": "x", "quality": "ultra"}, "quality must be one of"),
        ({"prompt": "x", "background": "none"}, "background must be one of"),
        ({"prompt": "x", "n": 2}, "unknown field 'n'"),
        (["prompt"], "JSON object"),
    ],
)
def test_invalid_bodies_are_rejected_with_400(
    quiet_server: srv.ServerHandle, body: Any, fragment: str
) -> None:
    with _client(quiet_server) as client:
        answer = _submit(client, body)
    assert answer.status_code == 400
    assert answer.json()["code"] == 400
    assert answer.json()["message"].startswith("Invalid parameters: ")
    assert fragment in answer.json()["message"]
    assert quiet_server.stats["accepted_tasks"] == 0


def test_edge_values_of_the_documented_rules_are_accepted(quiet_server: srv.ServerHandle) -> None:
    bodies = [
        {"prompt": "x" * 32000, "size": "1024x1536", "quality": "high", "background": "opaque"},
        {"prompt": "y"},
        {"prompt": "z", "background": "transparent", "quality": "low"},
    ]
    with _client(quiet_server) as client:
        codes = [_submit(client, body).status_code for body in bodies]
        also_without_async = client.post("/api/v1/openai/gpt-image-1.5", json={"prompt": "w"})
        unknown_model = client.post("/api/v1/openai/gpt-image-9/async", json={"prompt": "w"})
        unknown_task = client.get("/api/v1/tasks/task-openai-nope")
    assert codes == [200, 200, 200]
    assert also_without_async.status_code == 200
    assert unknown_model.status_code == 404
    assert unknown_model.json()["code"] == 404
    assert unknown_task.status_code == 404


def test_result_urls_expire_with_403_404_or_410(clock: srv.ManualClock, cdn: httpx.Client) -> None:
    with srv.running_server(seed=11, clock=clock, result_ttl=5.0) as server, _client(server) as c:
        ids = [_submit(c, {"prompt": f"p{i}"}).json()["data"]["task_id"] for i in range(12)]
        clock.advance(1.0)
        urls = [
            c.get(f"/api/v1/tasks/{t}").json()["data"]["result"]["resources"][0]["url"] for t in ids
        ]
        fresh = [cdn.get(u).status_code for u in urls]
        clock.advance(5.0)
        stale = [cdn.get(u).status_code for u in urls]
        tampered = cdn.get(urls[0].replace("Signature=", "Signature=0")).status_code
    assert fresh == [200] * 12
    assert set(stale) <= {403, 404, 410}
    assert len(set(stale)) >= 2  # more than one way of saying "expired"
    assert tampered == 403
    assert server.stats["expired_downloads"] == 12


def test_expires_at_is_sometimes_reported_and_some_urls_are_born_expired(
    clock: srv.ManualClock,
    cdn: httpx.Client,
) -> None:
    with (
        srv.running_server(seed=5, clock=clock, fault_url_expired=0.5) as server,
        _client(server) as client,
    ):
        ids = [_submit(client, {"prompt": f"q{i}"}).json()["data"]["task_id"] for i in range(40)]
        clock.advance(1.0)
        answers = [client.get(f"/api/v1/tasks/{t}").json()["data"] for t in ids]
        codes = Counter(cdn.get(a["result"]["resources"][0]["url"]).status_code for a in answers)
    assert sum(1 for a in answers if "result_expires_at" in a) >= 10
    assert 10 <= codes[200] <= 30
    assert codes[200] + codes[403] + codes[404] + codes[410] == 40


def test_failed_and_successful_tasks_use_every_documented_status_word(
    clock: srv.ManualClock,
) -> None:
    with (
        srv.running_server(seed=2, clock=clock, fault_task_failed=0.5) as server,
        _client(server) as client,
    ):
        ids = [_submit(client, {"prompt": f"s{i}"}).json()["data"]["task_id"] for i in range(60)]
        clock.advance(1.0)
        words = Counter(client.get(f"/api/v1/tasks/{t}").json()["data"]["status"] for t in ids)
    assert set(words) == set(srv.SUCCESS_WORDS) | set(srv.FAILURE_WORDS)
    assert server.stats["failed_tasks"] == sum(words[w] for w in srv.FAILURE_WORDS)


def test_unknown_status_words_appear_while_running(clock: srv.ManualClock) -> None:
    with (
        srv.running_server(seed=2, clock=clock, fault_unknown_status=0.5) as server,
        _client(server) as client,
    ):
        task_id = _submit(client, {"prompt": "u"}).json()["data"]["task_id"]
        words = Counter(
            client.get(f"/api/v1/tasks/{task_id}").json()["data"]["status"] for _ in range(40)
        )
    assert set(words) & set(srv.UNKNOWN_RUNNING_WORDS)
    assert not set(words) & (set(srv.SUCCESS_WORDS) | set(srv.FAILURE_WORDS))


def test_concurrent_task_limit_answers_429_until_a_task_ends(clock: srv.ManualClock) -> None:
    with (
        srv.running_server(seed=1, clock=clock, max_concurrent_tasks=2) as server,
        _client(server) as client,
    ):
        first = [_submit(client, {"prompt": f"c{i}"}).status_code for i in range(2)]
        blocked = _submit(client, {"prompt": "c2"})
        clock.advance(1.0)
        later = _submit(client, {"prompt": "c2"})
    assert first == [200, 200]
    assert blocked.status_code == 429
    assert "concurrent task limit" in blocked.json()["message"]
    assert later.status_code == 200
    assert server.stats["max_in_flight"] == 2


def test_429_retry_hints_come_as_date_seconds_or_rate_limit_reset(clock: srv.ManualClock) -> None:
    with (
        srv.running_server(seed=4, clock=clock, fault_429=1.0, retry_after=2.0) as server,
        _client(server) as client,
    ):
        answers = [_submit(client, {"prompt": f"r{i}"}) for i in range(30)]
    styles = Counter()
    for answer in answers:
        assert answer.status_code == 429
        assert answer.json()["code"] == 429
        retry_after = answer.headers.get("retry-after")
        if retry_after is None:
            assert int(answer.headers["x-ratelimit-reset"]) > 1_000_000_000
            styles["reset"] += 1
        elif retry_after.isdigit():
            assert int(retry_after) == 2
            styles["seconds"] += 1
        else:
            assert email.utils.parsedate_to_datetime(retry_after).tzinfo is not None
            styles["date"] += 1
    assert set(styles) == {"reset", "seconds", "date"}
    assert server.stats["accepted_tasks"] == 0


def test_submits_sent_before_the_advertised_retry_instant_are_counted(
    clock: srv.ManualClock,
) -> None:
    options = {"first_submits_429": 1, "retry_after": 5.0, "retry_after_style": "seconds"}
    with srv.running_server(clock=clock, **options) as server, _client(server) as client:
        throttled = _submit(client, {"prompt": "a"})
        too_early = _submit(client, {"prompt": "a"})
        clock.advance(5.0)
        in_time = _submit(client, {"prompt": "b"})
    assert throttled.status_code == 429
    assert throttled.headers["retry-after"] == "5"
    assert (too_early.status_code, in_time.status_code) == (200, 200)
    assert server.stats["submits_before_retry_after"] == 1


def test_resubmits_before_a_503_retry_after_are_counted(clock: srv.ManualClock) -> None:
    options = {"first_submits_503": 1, "retry_after": 2.0}
    with srv.running_server(clock=clock, **options) as server, _client(server) as client:
        unavailable = _submit(client, {"prompt": "a"})
        other_body = _submit(client, {"prompt": "b"})
        too_early = _submit(client, {"prompt": "a"})
        clock.advance(2.0)
        in_time = _submit(client, {"prompt": "a"})
    assert unavailable.status_code == 503
    assert unavailable.headers["retry-after"] == "2"
    assert [r.status_code for r in (other_body, too_early, in_time)] == [200, 200, 200]
    assert server.stats["resubmits_before_retry_after"] == 1


def test_proxy_and_server_errors_have_their_documented_and_inferred_shapes(
    clock: srv.ManualClock,
) -> None:
    seen: dict[str, httpx.Response] = {}
    for kind in ("500", "502", "503", "504", "200_error"):
        with (
            srv.running_server(clock=clock, retry_after=1.0, **{f"fault_{kind}": 1.0}) as server,
            _client(server) as client,
        ):
            seen[kind] = _submit(client, {"prompt": "e"})
            assert server.stats["accepted_tasks"] == 0
    assert seen["500"].status_code == 500
    assert seen["500"].json() == {
        "code": 500,
        "message": "Internal: unexpected error while handling the request",
    }
    for kind in ("502", "504"):
        assert seen[kind].status_code == int(kind)
        assert seen[kind].headers["content-type"] == "text/html"
        assert seen[kind].text.startswith("<html>")
    assert seen["503"].status_code == 503
    assert seen["503"].headers["retry-after"] == "1"
    assert seen["200_error"].status_code == 200
    assert seen["200_error"].json()["code"] == 500
    assert seen["200_error"].json()["message"].startswith("Internal: ")


def test_dropped_submits_before_and_after_acceptance(clock: srv.ManualClock) -> None:
    with (
        srv.running_server(seed=1, clock=clock, fault_drop=1.0) as server,
        _client(server) as client,
        pytest.raises(httpx.TransportError),
    ):
        _submit(client, {"prompt": "d"})
    assert server.stats["accepted_tasks"] == 0
    with (
        srv.running_server(seed=1, clock=clock, fault_drop_after_accept=1.0) as server,
        _client(server) as client,
        pytest.raises(httpx.TransportError),
    ):
        _submit(client, {"prompt": "d"})
    assert server.stats["accepted_tasks"] == 1
    assert server.stats["orphaned_tasks"] == 1
    (task,) = server.tasks()
    assert task.delivered is False
    with (
        srv.running_server(seed=1, clock=clock, fault_504_after_accept=1.0) as server,
        _client(server) as client,
    ):
        answer = _submit(client, {"prompt": "d"})
    assert answer.status_code == 504
    assert server.stats["orphaned_tasks"] == 1


def test_balance_and_submit_key_revocation_stop_submits_but_not_polls(
    clock: srv.ManualClock,
) -> None:
    for options, status in (({"balance": 2}, 402), ({"submit_unauthorized_after": 2}, 401)):
        with (
            srv.running_server(clock=clock, **options) as server,
            _client(server) as client,
        ):
            ids = [_submit(client, {"prompt": f"b{i}"}).json()["data"]["task_id"] for i in range(2)]
            refused = _submit(client, {"prompt": "b2"})
            clock.advance(1.0)
            polls = [client.get(f"/api/v1/tasks/{t}").json()["data"]["status"] for t in ids]
        assert refused.status_code == status
        assert refused.json()["code"] == status
        assert all(word in srv.SUCCESS_WORDS for word in polls)
    with srv.running_server(clock=clock, revoke_key_after=1) as server, _client(server) as client:
        task_id = _submit(client, {"prompt": "k"}).json()["data"]["task_id"]
        assert client.get(f"/api/v1/tasks/{task_id}").status_code == 401


def test_downloads_can_be_chunked_truncated_or_refused(
    clock: srv.ManualClock, cdn: httpx.Client
) -> None:
    options = {"fault_download_truncated": 0.3, "fault_download_503": 0.3, "chunked_downloads": 1}
    with srv.running_server(seed=9, clock=clock, **options) as server, _client(server) as c:
        task_id = _submit(c, {"prompt": "t"}).json()["data"]["task_id"]
        clock.advance(1.0)
        url = c.get(f"/api/v1/tasks/{task_id}").json()["data"]["result"]["resources"][0]["url"]
        outcomes: Counter[str] = Counter()
        for _ in range(40):
            try:
                answer = cdn.get(url)
            except httpx.TransportError:
                outcomes["truncated"] += 1
                continue
            if answer.status_code == 200:
                assert "content-length" not in answer.headers
                check_png(answer.content)
                outcomes["ok"] += 1
            else:
                assert answer.status_code == 503
                outcomes["503"] += 1
    assert set(outcomes) == {"ok", "503", "truncated"}
    assert server.stats["downloads"] == outcomes["ok"]


def _fault_run(seed: int, requests: int) -> dict[str, Any]:
    clock = srv.ManualClock()
    rates = {f"fault_{kind}": 0.1 for kind in srv.API_FAULTS + srv.SUBMIT_ONLY_FAULTS}
    with (
        srv.running_server(seed=seed, clock=clock, **rates) as server,
        _client(server) as client,
    ):
        for i in range(requests):
            with contextlib.suppress(httpx.TransportError):
                _submit(client, {"prompt": f"fault {i}"})
        return server.stats.snapshot()


def test_faults_fire_at_their_configured_rates_and_repeat_per_seed() -> None:
    first = _fault_run(seed=21, requests=200)
    again = _fault_run(seed=21, requests=200)
    other = _fault_run(seed=22, requests=50)
    faults = first["faults"]
    for kind in srv.API_FAULTS + srv.SUBMIT_ONLY_FAULTS:
        assert 8 <= faults.get(kind, 0) <= 40, (kind, faults)
    assert faults["dropped_connection"] == faults["drop"] + faults["drop_after_accept"]
    assert first["orphaned_tasks"] == faults["drop_after_accept"] + faults["504_after_accept"]
    assert first["accepted_tasks"] == 200 - sum(faults[k] for k in srv.API_FAULTS)
    assert first == again
    assert first["faults"] != other["faults"]


def test_options_refuse_impossible_probabilities() -> None:
    with pytest.raises(ValueError, match=r"within 0\.\.1"):
        srv.ServerOptions(fault_500=1.5)
    with pytest.raises(ValueError, match="more than 1"):
        srv.ServerOptions(fault_500=0.6, fault_503=0.6)


def test_real_clock_tasks_finish_on_their_own() -> None:
    with (
        srv.running_server(seed=1, latency_ms=(5.0, 20.0)) as server,
        _client(server) as client,
    ):
        url = _submit(client, {"prompt": "live"}).json()["data"]["get_result"]["url"]
        for _ in range(500):  # bounded; a task lasts at most 20 ms
            status = client.get(url).json()["data"]["status"]
            if status in srv.SUCCESS_WORDS:
                break
            time.sleep(0.01)
        assert status in srv.SUCCESS_WORDS
    assert server.stats["server_errors"] == 0
