"""Downloading a succeeded task's results (:class:`Downloads`): in turn in the download lane
(polls and submits first), each image into a temporary file that is checked (length, image
magic bytes, complete trailer), fsynced and renamed before it is recorded with its sha256.

A task returns one image or several (``n``): every image resource of the answer is kept, in
the answer's order — ``images/<job_id>.<ext>`` for a task's only image,
``images/<job_id>-<i>.<ext>`` (i from 0) for several.  Each image is recorded in the state
file once durable; the job is ``done`` (with the last image, in one transaction) only when
all are.  A resumed job downloads only the images not recorded yet: none is fetched twice.

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
from batchgen.store.records import ImageRecord, ResultInfo

__all__ = ["Downloads", "image_resources"]

logger = logging.getLogger("batchgen.run")


def image_resources(resources: list[Resource]) -> list[Resource]:
    """The images of a task's result, in order: every resource that is (or may be) a primary
    image; when none is, the first resource alone."""
    images = [r for r in resources if r.role in (None, "primary") and r.type in (None, "image")]
    return images or resources[:1]


def _as_result(image: ImageRecord) -> ResultInfo:
    return ResultInfo(
        result_path=image.path,
        sha256=image.sha256,
        bytes=image.bytes,
        format=image.format,
        width=image.width,
        height=image.height,
    )


class Downloads(RunnerCore):
    """The download stage of a run."""

    async def _download(self, job_id: str, resources: list[Resource], attempts: int) -> None:
        """Download, check and record the results, in turn in the download lane (see
        :class:`batchgen.run.pacing.DownloadLane`: polls and submits first)."""
        await self._downloads.acquire()
        try:
            await self._download_in_lane(job_id, resources, attempts)
        finally:
            self._downloads.release()

    async def _download_in_lane(
        self, job_id: str, resources: list[Resource], attempts: int
    ) -> None:
        wanted = image_resources(resources)
        if not wanted:
            self._retry_or_fail(job_id, "downloading", attempts, "task succeeded without a result")
            return
        several = len(wanted) > 1
        recorded: dict[int, ImageRecord] = {}
        if several or attempts > 1:  # a first task's only image is recorded with `done` alone
            recorded = {image.index: image for image in self.store.job_images(job_id)}
        missing = [i for i in range(len(wanted)) if i not in recorded]
        if not missing:  # every image durable before a crash: only the transition is left
            last = recorded[len(wanted) - 1]
            self._finish(job_id, recorded, (last.index, last.url, _as_result(last)))
            return
        for i in missing:
            resource = wanted[i]
            fetched = await self._download_one(job_id, i if several else None, resource, attempts)
            if fetched is None:
                return  # the job was moved on (retry, failed, expired) or the run stops
            self.summary.downloads += 1
            if i != missing[-1]:
                self.store.record_image(job_id, i, resource.url, fetched)
                recorded[i] = ImageRecord(
                    job_id,
                    i,
                    None,
                    resource.url,
                    fetched.result_path,
                    fetched.sha256,
                    fetched.bytes,
                    fetched.width,
                    fetched.height,
                    fetched.format,
                    "done",
                    0.0,
                )
            else:
                self._finish(job_id, recorded, (i, resource.url, fetched))

    def _finish(
        self,
        job_id: str,
        recorded: dict[int, ImageRecord],
        last: tuple[int, str | None, ResultInfo],
    ) -> None:
        """Record the last image and move the job to ``done``; append its metadata lines."""
        first = _as_result(recorded[0]) if 0 in recorded and last[0] != 0 else last[2]
        done = self.store.mark_done(job_id, first, image=last)
        self._moved("downloading", "done")
        try:
            if recorded:
                self.output.append_metadata(done, self.store.job_images(job_id))
            else:  # the task's only image: the job's row has it
                self.output.append_metadata(done)
        except OSError as exc:  # the next run rebuilds metadata.jsonl from the state file
            self._stop(f"cannot append to metadata.jsonl: {exc}", ExitCode.STOPPED)

    async def _download_one(
        self, job_id: str, index: int | None, resource: Resource, attempts: int
    ) -> ResultInfo | None:
        """One image made durable, or ``None`` when it could not be (the job was moved on)."""
        tries = 0
        while True:
            tries += 1
            try:
                image, result = await self._fetch(job_id, index, resource)
                await self._committer.commit(image, result)
            except ResultExpired as exc:
                if attempts >= 1 + self.limits.retries:
                    self.store.mark_expired(job_id, f"result URL expired: {exc}")
                    self._moved("downloading", "expired")
                    return None
                if self._retry_or_fail(
                    job_id, "downloading", attempts, f"result URL expired: {exc}"
                ):
                    self.summary.regenerated += 1
                return None
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
                return None
            except OSError as exc:
                # Disk full, unwritable directory...: stop; the job stays `downloading` and the
                # next run polls the task again and downloads what is missing.
                self._stop(f"cannot write the result of job {job_id}: {exc}", ExitCode.STOPPED)
                return None
            return result

    async def _fetch(
        self, job_id: str, index: int | None, resource: Resource
    ) -> tuple[ImageFile, ResultInfo]:
        """Download into a new temp file and check it; the file is removed on any error."""
        image = self.output.new_image(job_id, index)
        try:
            got = await self.client.download(resource.url, image)
            return image, image.check(expected_bytes=got.bytes, sha256=got.sha256)
        except BaseException:
            image.discard()
            raise
