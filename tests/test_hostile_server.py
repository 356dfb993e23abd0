"""Hostile or broken server answers, at the level of a whole run.

A tiny fake API on ``httpx.MockTransport`` answers well except for one route that
misbehaves: not JSON, JSON of the wrong shape, huge bodies, tasks that never end,
result URLs that are insecure or redirect off the loopback host, downloads over the
cap or not images, a lying ``Content-Length``, task ids with path characters, answers
that never come.  For every one the run must end (no crash, no hang past its
deadline), every job must end with a reason, nothing may be written outside the run
directory, and the key may only ever be sent to the API's origin.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from batchgen.api import ModellixClient
from batchgen.manifest.types import Limits
from batchgen.simulator.png import png_bytes
from batchgen.store.state import StateStore
from tests.runhelpers import check_run_dir, fast_options, make_jobs, run_in_dir

pytestmark = pytest.mark.anyio

KEY = "hostile-test-key-0123456789"
API = "http://127.0.0.1"
CAP = 200_000  # the client's download cap in these tests
LIMITS = Limits(concurrency=4, rate=1000.0, retries=1, timeout=0.4)
ALLOWED_FILES = {"state.db", "state.db-wal", "state.db-shm", "run.lock", "images", "metadata.jsonl"}
ALLOWED_FILES |= {"metrics.prom"}

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


def _ok(data: dict[str, Any]) -> httpx.Response:
    return httpx.Response(200, json={"code": 0, "message": "success", "data": data})


class FakeApi:
    """A well-behaved API whose routes the scenarios replace one at a time."""

    def __init__(self) -> None:
        self.ids = itertools.count(1)
        self.requests: list[httpx.Request] = []
        self.submit: Handler = self.good_submit
        self.poll: Handler = self.good_poll
        self.download: Handler = self.good_download
        self.result_url: Callable[[str], str] = lambda task_id: f"{API}/files/{task_id}.png"
        self.resource_extra: dict[str, Any] = {}

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if request.url.host != "127.0.0.1":
            return await self.download(request)  # a "CDN" host
        if request.method == "POST" and path.endswith("/async"):
            return await self.submit(request)
        if path.startswith("/api/v1/tasks/"):
            return await self.poll(request)
        if path.startswith("/files/"):
            return await self.download(request)
        return httpx.Response(404, json={"code": 404, "message": "Not Found: no route"})

    async def good_submit(self, request: httpx.Request) -> httpx.Response:
        task_id = f"task-{next(self.ids)}"
        return _ok({"status": "pending", "task_id": task_id})

    async def good_poll(self, request: httpx.Request) -> httpx.Response:
        task_id = request.url.path.rsplit("/", 1)[1]
        resource = {
            "url": self.result_url(task_id),
            "type": "image",
            "format": "png",
            "width": 16,
            "height": 16,
            **self.resource_extra,
        }
        return _ok({"status": "success", "task_id": task_id, "result": {"resources": [resource]}})

    async def good_download(self, request: httpx.Request) -> httpx.Response:
        name = request.url.path.rsplit("/", 1)[1]
        return httpx.Response(
            200, content=png_bytes(16, 16, text=name), headers={"content-type": "image/png"}
        )


# ------------------------------------------------------------------------- scenarios
def _const(response: Callable[[], httpx.Response]) -> Handler:
    async def handler(request: httpx.Request) -> httpx.Response:
        return response()

    return handler


async def _forever(request: httpx.Request) -> httpx.Response:
    await asyncio.sleep(3600)
    raise AssertionError("unreachable")


def _html() -> httpx.Response:
    return httpx.Response(200, text="<html><body>Bad gateway</body></html>")


def _json(value: Any) -> Callable[[], httpx.Response]:
    return lambda: httpx.Response(200, content=json.dumps(value).encode())


def _nested(depth: int) -> Callable[[], httpx.Response]:
    return lambda: httpx.Response(200, content=b"[" * depth + b"]" * depth)


def _huge_json() -> httpx.Response:
    pad = "x" * (2 * 2**20)  # twice the 1 MiB cap of a JSON answer
    return httpx.Response(200, content=json.dumps({"code": 0, "data": {"pad": pad}}).encode())


async def _endless_chunks(size: int = 65536) -> AsyncIterator[bytes]:
    chunk = b"\x00" * size
    for _ in range(100_000):  # bounded: 6.5 GB, far past any cap
        yield chunk


def _submit_with_id(task_id: Any) -> Handler:
    return _const(_json({"code": 0, "data": {"status": "pending", "task_id": task_id}}))


def _poll_status(word: str) -> Handler:
    async def handler(request: httpx.Request) -> httpx.Response:
        return _ok({"status": word, "task_id": request.url.path.rsplit("/", 1)[1]})

    return handler


def _redirect(location: str) -> Handler:
    return _const(lambda: httpx.Response(302, headers={"location": location}))


def _big_png(with_length: bool) -> Handler:
    body = png_bytes(400, 400, text="big")
    padded = body[:-12] + b"\x00" * (CAP + 1000) + body[-12:]  # still ends like a PNG

    async def handler(request: httpx.Request) -> httpx.Response:
        if with_length:
            return httpx.Response(200, content=padded)

        async def stream() -> AsyncIterator[bytes]:
            for i in range(0, len(padded), 8192):
                yield padded[i : i + 8192]

        return httpx.Response(200, content=stream())

    return handler


def _lying_length(delta: int) -> Handler:
    async def handler(request: httpx.Request) -> httpx.Response:
        body = png_bytes(16, 16, text="liar")
        return httpx.Response(200, content=body, headers={"content-length": str(len(body) + delta)})

    return handler


def _endless_download() -> Handler:
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=_endless_chunks())

    return handler


Scenario = Callable[[FakeApi], None]


def _cdn_redirect(api: FakeApi) -> None:
    """The loopback result URL redirects to an https CDN host (allowed, without the key)."""

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "127.0.0.1":
            name = request.url.path.rsplit("/", 1)[1]
            return httpx.Response(302, headers={"location": f"https://cdn.example.net/o/{name}"})
        return await api.good_download(request)

    api.download = handler


def _set(**routes: Any) -> Scenario:
    def apply(api: FakeApi) -> None:
        for name, value in routes.items():
            setattr(api, name, value)

    return apply


SCENARIOS: dict[str, tuple[Scenario, str]] = {
    # name: (change to the fake, the outcome every job must reach: "done" or "failed")
    "submit_html": (_set(submit=_const(_html)), "failed"),
    "submit_empty_body": (_set(submit=_const(lambda: httpx.Response(200))), "failed"),
    "submit_json_list": (_set(submit=_const(_json([1, 2, 3]))), "failed"),
    "submit_json_null": (_set(submit=_const(_json(None))), "failed"),
    "submit_data_is_a_list": (_set(submit=_const(_json({"code": 0, "data": []}))), "failed"),
    "submit_task_id_number": (_set(submit=_submit_with_id(12345)), "failed"),
    "submit_task_id_missing": (_set(submit=_submit_with_id(None)), "failed"),
    "submit_task_id_dotdot": (_set(submit=_submit_with_id("../../../../tmp/evil")), "failed"),
    "submit_task_id_slash": (_set(submit=_submit_with_id("a/b")), "failed"),
    "submit_task_id_dots_only": (_set(submit=_submit_with_id("..")), "failed"),
    "submit_task_id_newline": (_set(submit=_submit_with_id("t\nInjected: yes")), "failed"),
    "submit_task_id_huge": (_set(submit=_submit_with_id("t" * 5000)), "failed"),
    "submit_nested_json_bomb": (_set(submit=_const(_nested(200_000))), "failed"),
    "submit_huge_json": (_set(submit=_const(_huge_json)), "failed"),
    "submit_code_not_zero": (
        _set(submit=_const(_json({"code": 999, "message": "odd", "data": {"task_id": "t1"}}))),
        "failed",
    ),
    "submit_never_answers": (_set(submit=_forever), "failed"),
    "poll_html": (_set(poll=_const(_html)), "failed"),
    "poll_wrong_shape": (_set(poll=_const(_json({"code": 0, "data": "success"}))), "failed"),
    "poll_huge_json": (_set(poll=_const(_huge_json)), "failed"),
    "poll_never_ends": (_set(poll=_poll_status("processing")), "failed"),
    "poll_unknown_status_forever": (_set(poll=_poll_status("warming-up")), "failed"),
    "poll_success_without_resources": (_set(poll=_poll_status("success")), "failed"),
    "poll_never_answers": (_set(poll=_forever), "failed"),
    "result_url_plain_http_remote": (
        _set(result_url=lambda t: f"http://cdn.example.com/{t}.png"),
        "failed",
    ),
    "result_url_file_scheme": (_set(result_url=lambda t: "file:///etc/passwd"), "failed"),
    "result_url_garbage": (_set(result_url=lambda t: "ht!tp://[::zz]/\x00"), "failed"),
    "redirect_to_plain_http_remote": (
        _set(download=_redirect("http://cdn.example.com/x.png")),
        "failed",
    ),
    "redirect_to_private_address_over_http": (
        _set(download=_redirect("http://10.0.0.1/x.png")),
        "failed",
    ),
    "redirect_loop": (_set(download=_redirect(f"{API}/files/again.png")), "failed"),
    "redirect_without_location": (
        _set(download=_const(lambda: httpx.Response(302))),
        "failed",
    ),
    "redirect_to_https_cdn_without_the_key": (
        _cdn_redirect,
        "done",
    ),
    "download_over_cap_with_length": (_set(download=_big_png(with_length=True)), "failed"),
    "download_over_cap_streamed": (_set(download=_big_png(with_length=False)), "failed"),
    "download_endless_stream": (_set(download=_endless_download()), "failed"),
    "download_not_an_image": (_set(download=_const(_html)), "failed"),
    "download_truncated_png": (
        _set(download=_const(lambda: httpx.Response(200, content=png_bytes(16, 16)[:-20]))),
        "failed",
    ),
    "download_length_says_more": (_set(download=_lying_length(+500)), "failed"),
    "download_length_says_less": (_set(download=_lying_length(-50)), "failed"),
    "download_never_answers": (_set(download=_forever), "failed"),
    "resource_format_and_sizes_hostile": (
        _set(resource_extra={"format": "../../x", "width": -5, "height": "1e999"}),
        "done",
    ),
    "resource_role_and_type_odd": (
        _set(resource_extra={"role": "<script>", "type": "../image"}),
        "done",
    ),
}


async def _run(tmp_path: Path, api: FakeApi, jobs: int = 2, **opts: Any) -> Any:
    client = ModellixClient(
        API,
        KEY,
        transport=httpx.MockTransport(api),
        operation_timeout=0.3,
        max_download_bytes=CAP,
    )
    options = fast_options(download_retries=1, metrics_interval=None, **opts)
    async with client:
        # The run must end by itself; this bound only turns a hang into a failure.
        return await asyncio.wait_for(
            run_in_dir(tmp_path / "run", client, make_jobs(jobs), LIMITS, options), 60
        )


def _check_contained(tmp_path: Path, api: FakeApi) -> None:
    """Nothing outside the run directory, only batchgen's own files inside it, and the key
    sent to the API's origin only."""
    assert sorted(os.listdir(tmp_path)) == ["run"]
    run = tmp_path / "run"
    assert set(os.listdir(run)) <= ALLOWED_FILES, os.listdir(run)
    for path in run.rglob("*"):
        assert path.resolve().is_relative_to(run.resolve())
        assert not path.is_symlink()
    for request in api.requests:
        if "authorization" in request.headers:
            assert (request.url.scheme, request.url.host, request.url.port) == (
                "http",
                "127.0.0.1",
                None,
            ), request.url


async def _check_scenario(tmp_path: Path, name: str) -> None:
    scenario, outcome = SCENARIOS[name]
    api = FakeApi()
    scenario(api)
    summary = await _run(tmp_path, api)
    counts = summary.counts
    assert counts[outcome] == 2, (name, counts, summary.failed_by_reason)
    assert summary.exit_code == (0 if outcome == "done" else 1)
    with StateStore.open_readonly(tmp_path / "run") as store:
        for job in store.iter_jobs():
            if job.state != "done":
                assert job.last_error, job
                assert KEY not in job.last_error
    check_run_dir(tmp_path / "run")
    _check_contained(tmp_path, api)
    hosts = {r.url.host for r in api.requests}
    assert hosts <= {"127.0.0.1", "cdn.example.net"}, hosts  # never a plain-http remote


async def test_every_hostile_answer_ends_every_job_with_a_reason_inside_the_run_dir(
    tmp_path: Path,
) -> None:
    # All scenarios at once (each its own fake, client and run directory), so the ones
    # that wait for a deadline overlap; each failure is reported by name.
    names = sorted(SCENARIOS)
    for name in names:
        (tmp_path / name).mkdir()
    results = await asyncio.gather(
        *(_check_scenario(tmp_path / name, name) for name in names), return_exceptions=True
    )
    failures = {name: repr(r) for name, r in zip(names, results, strict=True) if r is not None}
    assert not failures, failures


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SCENARIOS))
async def test_hostile_answer_alone(tmp_path: Path, name: str) -> None:
    await _check_scenario(tmp_path, name)


async def test_retry_after_of_a_year_is_bounded_by_max_runtime(tmp_path: Path) -> None:
    api = FakeApi()
    api.submit = _const(
        lambda: httpx.Response(
            429, json={"code": 429, "message": "slow down"}, headers={"retry-after": "31536000"}
        )
    )
    summary = await _run(tmp_path, api, max_runtime=0.5)
    assert summary.exit_code == 75
    assert summary.counts["pending"] == 2
    _check_contained(tmp_path, api)


async def test_a_task_that_never_ends_fails_at_its_deadline_and_others_finish(
    tmp_path: Path,
) -> None:
    api = FakeApi()
    stuck = {"task-1"}

    async def poll(request: httpx.Request) -> httpx.Response:
        task_id = request.url.path.rsplit("/", 1)[1]
        if task_id in stuck:
            return _ok({"status": "processing", "task_id": task_id})
        return await api.good_poll(request)

    api.poll = poll
    limits = dataclasses.replace(LIMITS, retries=0)
    client = ModellixClient(API, KEY, transport=httpx.MockTransport(api), operation_timeout=0.5)
    async with client:
        summary = await asyncio.wait_for(
            run_in_dir(tmp_path / "run", client, make_jobs(4), limits, fast_options()), 60
        )
    assert (summary.done, summary.failed) == (3, 1)
    assert any("timed out" in reason for reason in summary.failed_by_reason)
    _check_contained(tmp_path, api)
