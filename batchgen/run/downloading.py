"""Downloading a succeeded task's result (:class:`Downloads`): in turn in the download lane
(polls and submits first), into a temporary file that is checked (length, image magic bytes,
complete trailer), fsynced and renamed before the job is recorded ``done`` with its sha256.

A download that fails with a network or server error, or an incomplete image, is retried on
the same URL (``RunOptions.download_retries``), then the job gets another attempt.  An
expired result URL generates the image again while attempts remain, else the job is
``expired``.  A disk error stops new submissions (exit 3); the job stays ``downloading`` and the
next run polls its task again.
"""

from __future__ import annotations

import asyncio
import logging

from batchgen.api import ApiError, Resource, ResultExpired
from batchgen.errors import ExitCode
from batchgen.run.runner_core import RunnerCore
from batchgen.store.outputs import ImageCheckError, ImageFile
from batchgen.store.records import ResultInfo

__all__ = ["Downloads"]

logger = logging.getLogger("batchgen.run")


class Downloads(RunnerCore):
    """The download stage of a run."""

    def _pick(self, resources: list[Resource]) -> Resource | None:
        for res in resources:
            if res.role in (None, "primary") and res.type in (None, "image"):
                return res
        return resources[0] if resources else None

    async def _download(self, job_id: str, resources: list[Resource], attempts: int) -> None:
        """Download, check and record the result, in turn in the download lane (see
        :class:`batchgen.run.pacing.DownloadLane`: polls and submits first)."""
        await self._downloads.acquire()
        try:
            await self._download_in_lane(job_id, resources, attempts)
        finally:
            self._downloads.release()

    async def _download_in_lane(
        self, job_id: str, resources: list[Resource], attempts: int
    ) -> None:
        resource = self._pick(resources)
        if resource is None:
            self._retry_or_fail(job_id, "downloading", attempts, "task succeeded without a result")
            return
        tries = 0
        while True:
            tries += 1
            try:
                image, result = await self._fetch(job_id, resource)
                await self._committer.commit(image, result)
            except ResultExpired as exc:
                if attempts >= 1 + self.limits.retries:
                    self.store.mark_expired(job_id, f"result URL expired: {exc}")
                    self._moved("downloading", "expired")
                    return
                if self._retry_or_fail(
                    job_id, "downloading", attempts, f"result URL expired: {exc}"
                ):
                    self.summary.regenerated += 1
                return
            except (ApiError, ImageCheckError) as exc:
                if tries <= self.opts.download_retries and (
                    isinstance(exc, ImageCheckError) or exc.retryable
                ):
                    retry_after = exc.retry_after if isinstance(exc, ApiError) else None
                    await asyncio.sleep(self._backoff(tries, self.opts.backoff_cap, retry_after))
                    continue
                self._retry_or_fail(
                    job_id,
                    "downloading",
                    attempts,
                    f"download failed: {exc}",
                    exc.retry_after if isinstance(exc, ApiError) else None,
                )
                return
            except OSError as exc:
                # Disk full, unwritable directory...: stop; the job stays `downloading` and the
                # next run polls the task again and downloads it.
                self._stop(f"cannot write the result of job {job_id}: {exc}", ExitCode.STOPPED)
                return
            self.summary.downloads += 1
            done = self.store.mark_done(job_id, result)
            self._moved("downloading", "done")
            try:
                self.output.append_metadata(done)
            except OSError as exc:  # the next run rebuilds metadata.jsonl from the state file
                self._stop(f"cannot append to metadata.jsonl: {exc}", ExitCode.STOPPED)
            return

    async def _fetch(self, job_id: str, resource: Resource) -> tuple[ImageFile, ResultInfo]:
        """Download into a new temp file and check it; the file is removed on any error."""
        image = self.output.new_image(job_id)
        try:
            got = await self.client.download(resource.url, image)
            return image, image.check(expected_bytes=got.bytes, sha256=got.sha256)
        except BaseException:
            image.discard()
            raise
