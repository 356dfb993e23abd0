"""``batchgen gallery``: a static HTML contact sheet of one or more runs, from their state files.

:func:`build_gallery` reads each run's ``state.db`` read-only (the manifest is not needed and
a run may be writing), makes the missing thumbnails under ``RUN/gallery/thumbs/``
(:mod:`batchgen.reports.thumbnails`) and writes one self-contained page
(:mod:`batchgen.reports.gallery_html`; default ``RUN/gallery/index.html`` of the first run).

Grouping.  The state file records each job's template variables (matrix keys and
prompts-file columns that are not body fields: ``subject``, ``style``, ...), expanded body,
model, group (``jobs[0]``) and repeat index, so the axes a gallery can use are: the
variables, the body's fields (``size``, ``quality``, ``prompt``, ...), ``model``,
``group``, ``repeat``, ``state`` and ``run``.  A run recorded before the state file kept
variables offers the others only.  Without axes there is one section per job group; with
``x`` and/or ``y`` one grid with those values as column/row headers (in the order the jobs
come), the other jobs of a cell stacked in it.  A job that has one axis and not the other
goes to the ``-`` column/row; jobs that have none of the axes (another job group without
those variables) follow the grid, one section per job group.

Images.  A done job shows every image the state file records for it (``images`` rows,
:meth:`~batchgen.store.queries.JobQueries.images_by_job`), in index order, each labelled
with its index when there are several.

Failures.  A failed, rejected or expired job is a placeholder in its place, labelled with
its state and :func:`batchgen.reports.reasons.failure_reason`; with ``states="all"``
(the default) jobs not finished yet are placeholders too; ``states="done"`` shows images only.

Image files are read from the state file's records, never guessed from job IDs.  Every
link is relative to the page, so the folder holding the page and the runs can be copied
elsewhere.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchgen.errors import ExitCode
from batchgen.reports.gallery_html import Card, Grid, Page, Section, render_page
from batchgen.reports.reasons import failure_reason
from batchgen.reports.thumbnails import (
    THUMB_EXT,
    Parallelism,
    ThumbRequest,
    make_thumbnails,
    thumb_key,
)
from batchgen.store.records import ImageRecord
from batchgen.store.state import DONE, JobRecord, StateError, StateStore, state_path

__all__ = [
    "GALLERY_DIR",
    "GalleryError",
    "GalleryResult",
    "Tile",
    "available_axes",
    "axis_value",
    "build_gallery",
    "load_tiles",
]

GALLERY_DIR = "gallery"
THUMBS_DIR = "thumbs"
PAGE_NAME = "index.html"
#: Axis names that are not body fields.
META_AXES = ("model", "group", "repeat", "state", "run")
MISSING = "-"
_STATES = frozenset({"done", "all"})


ToCard = Callable[["Tile", str], Card]


class GalleryError(StateError):
    """The gallery cannot be made (no state file, unknown axis, ...); the message says why."""

    exit_code = ExitCode.USAGE


@dataclass(frozen=True)
class Image:
    """One result file of a job: where it is and where its thumbnail goes."""

    run_dir: Path
    rel: str  #: the image file, relative to ``run_dir`` (as the state file records it)
    thumb: str | None  #: its thumbnail, relative to ``run_dir`` (None: the file is missing)
    width: int | None
    height: int | None
    index: int = 0  #: its place in the task's result (``images/<job_id>-<index>.<ext>``)

    @property
    def path(self) -> Path:
        """The image file."""
        return self.run_dir / self.rel


@dataclass(frozen=True)
class Tile:
    """One job as the gallery shows it."""

    run: str  #: label of its run (the run directory's name)
    job: JobRecord
    images: tuple[Image, ...]
    reason: str | None  #: why it has no image (failure reason or state), None when done


@dataclass
class GalleryResult:
    """What :func:`build_gallery` wrote."""

    page: Path
    tiles: int = 0
    images: int = 0
    placeholders: int = 0
    thumbs_made: int = 0
    thumbs_kept: int = 0
    thumbs_failed: dict[str, str] = field(default_factory=dict)
    page_bytes: int = 0


def run_dir_of(run: Path) -> Path:
    """The run directory of ``run`` (a run directory or its state file)."""
    path = state_path(Path(run))
    return path.parent


def _job_images(run_dir: Path, records: Sequence[ImageRecord]) -> tuple[Image, ...]:
    out = []
    for record in records:
        key = thumb_key(run_dir / record.path, record.sha256)
        out.append(
            Image(
                run_dir=run_dir,
                rel=record.path,
                thumb=f"{GALLERY_DIR}/{THUMBS_DIR}/{key}{THUMB_EXT}" if key else None,
                width=record.width,
                height=record.height,
                index=record.index,
            )
        )
    return tuple(out)


def load_tiles(runs: Sequence[Path], *, states: str = "all") -> list[Tile]:
    """Every job of ``runs`` (run directories or state files) in state-file order, run by run;
    with ``states="done"`` only done jobs."""
    if states not in _STATES:
        raise GalleryError(f"states must be one of {sorted(_STATES)}, not {states!r}")
    tiles: list[Tile] = []
    labels = _run_labels([run_dir_of(r) for r in runs])
    for run, label in zip(runs, labels, strict=True):
        run_dir = run_dir_of(run)
        try:
            store = StateStore.open_readonly(run)
        except StateError as exc:
            raise GalleryError(str(exc)) from exc
        with store:
            recorded = store.images_by_job()
            for job in store.iter_jobs([DONE] if states == "done" else None):
                if job.state == DONE:
                    images = _job_images(run_dir, recorded.get(job.job_id, ()))
                    reason = None if images else "done, but no result file recorded"
                else:
                    images = ()
                    reason = (
                        failure_reason(job.state, job.last_error)
                        if job.state in ("failed", "rejected", "expired")
                        else job.state
                    )
                tiles.append(Tile(label, job, images, reason))
    return tiles


def _run_labels(run_dirs: Sequence[Path]) -> list[str]:
    names = [d.resolve().name for d in run_dirs]
    if len(set(names)) == len(names):
        return names
    return [f"{n} ({i + 1})" for i, n in enumerate(names)]


def render_value(value: Any) -> str:
    """A body value as text: strings as they are, anything else as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def axis_value(tile: Tile, name: str) -> str:
    """The value of axis ``name`` for ``tile`` (``-`` when the job has no such field)."""
    job = tile.job
    if name == "model":
        return job.model
    if name == "group":
        return job.group
    if name == "repeat":
        return str(job.repeat_index)
    if name == "state":
        return job.state
    if name == "run":
        return tile.run
    if name in job.variables:
        return render_value(job.variables[name])
    if name in job.body:
        return render_value(job.body[name])
    return MISSING


def _variable_names(tiles: Iterable[Tile]) -> list[str]:
    """The template variables of the tiles' jobs, in the order they first appear."""
    names: dict[str, None] = {}
    for tile in tiles:
        names.update(dict.fromkeys(tile.job.variables))
    return list(names)


def available_axes(tiles: Iterable[Tile]) -> list[str]:
    """Every axis name the tiles offer: template variables (in manifest order), body fields
    (sorted), then the meta axes."""
    tiles = list(tiles)
    variables = _variable_names(tiles)
    fields: set[str] = set()
    for tile in tiles:
        fields.update(tile.job.body)
    named = [*variables, *sorted(fields - set(variables))]
    return named + [a for a in META_AXES if a not in named]


def _check_axis(name: str | None, tiles: Sequence[Tile]) -> None:
    if name is None or not tiles:
        return
    axes = available_axes(tiles)
    if name not in axes:
        old = "" if _variable_names(tiles) else (
            "; these runs were recorded without their template variables (run the manifest "
            "again on the run directory to record them)"
        )  # fmt: skip
        raise GalleryError(
            f"no variable {name!r} in these runs{old}; use one of: {', '.join(axes)}"
        )


def _varying(tiles: Sequence[Tile], skip: Iterable[str] = ()) -> list[str]:
    """Body fields (and model) whose value differs between ``tiles``, in a stable order."""
    skipped = set(skip)
    first: dict[str, str] = {}
    varying: dict[str, None] = {}
    names: dict[str, None] = {}
    for tile in tiles:
        names.update(dict.fromkeys(tile.job.body))
    candidates = ["model", *_variable_names(tiles), *sorted(names)]
    for tile in tiles:
        for name in candidates:
            if name in skipped or name in varying:
                continue
            value = axis_value(tile, name)
            if first.setdefault(name, value) != value:
                varying[name] = None
    # Short fields first: a long prompt is cut at the end of a caption.
    order = [n for n in candidates if n != "prompt"] + ["prompt"]
    return [n for n in order if n in varying]


def _caption(tile: Tile, fields: Sequence[str]) -> str:
    parts = [axis_value(tile, f) for f in fields]
    if tile.job.repeat_index:
        parts.append(f"#{tile.job.repeat_index + 1}")
    return " · ".join(parts)


def _cards(tiles: Sequence[Tile], fields: Sequence[str], to_card: ToCard) -> list[Card]:
    return [to_card(tile, _caption(tile, fields)) for tile in tiles]


def _constant(tiles: Sequence[Tile], varying: Sequence[str]) -> str:
    """What every tile of a section shares (model and body fields), for its heading."""
    if not tiles:
        return ""
    job = tiles[0].job
    shown = [job.model] + [
        f"{k}={render_value(v)}" for k, v in sorted(job.body.items()) if k not in varying
    ]
    return " · ".join(shown)


def build_layout(
    tiles: Sequence[Tile], *, x: str | None, y: str | None, to_card: ToCard
) -> tuple[list[Section], Grid | None]:
    """Sections (one per job group) when no axis is given, else one grid."""
    if x is None and y is None:
        by_group: dict[str, list[Tile]] = {}
        for tile in tiles:
            by_group.setdefault(tile.job.group, []).append(tile)
        sections = []
        for group, members in by_group.items():
            varying = _varying(members)
            sections.append(
                Section(
                    title=group,
                    subtitle=_constant(members, varying),
                    cards=_cards(members, varying, to_card),
                )
            )
        return sections, None
    xs: dict[str, None] = {}
    ys: dict[str, None] = {}
    cells: dict[tuple[str, str], list[Tile]] = {}
    on_grid: list[Tile] = []
    off_grid: list[Tile] = []
    for tile in tiles:
        xv = axis_value(tile, x) if x else ""
        yv = axis_value(tile, y) if y else ""
        if all(axis_value(tile, a) == MISSING for a in (x, y) if a):
            off_grid.append(tile)  # none of the axes: not a point of this grid
            continue
        on_grid.append(tile)
        xs[xv] = None
        ys[yv] = None
        cells.setdefault((yv, xv), []).append(tile)
    skip = [a for a in (x, y) if a]
    if on_grid and all(t.job.variables for t in on_grid):
        skip.append("prompt")  # made of the variables; the info panel shows it
    varying = _varying(on_grid, skip=skip)
    grid = Grid(
        x_name=x or "",
        y_name=y or "",
        xs=list(xs),
        ys=list(ys),
        cells={k: _cards(v, varying, to_card) for k, v in cells.items()},
    )
    sections, _ = build_layout(off_grid, x=None, y=None, to_card=to_card)
    return sections, grid


def default_page(runs: Sequence[Path]) -> Path:
    """``RUN/gallery/index.html`` of the first run."""
    return run_dir_of(runs[0]) / GALLERY_DIR / PAGE_NAME


def build_gallery(
    runs: Sequence[Path],
    *,
    output: Path | None = None,
    x: str | None = None,
    y: str | None = None,
    states: str = "all",
    workers: int | None = None,
    parallelism: Parallelism = "thread",
) -> GalleryResult:
    """Make the missing thumbnails of ``runs`` and write the page (``output`` or
    :func:`default_page`); returns what was done.  Raises :class:`GalleryError`."""
    if not runs:
        raise GalleryError("no run given")
    tiles = load_tiles(runs, states=states)
    _check_axis(x, tiles)
    _check_axis(y, tiles)
    page = Path(output) if output is not None else default_page(runs)
    for run in runs:
        thumbs = run_dir_of(run) / GALLERY_DIR / THUMBS_DIR
        try:
            thumbs.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise GalleryError(f"cannot create {thumbs}: {exc}") from exc
    requests = [
        ThumbRequest(image.path, image.run_dir / image.thumb)
        for tile in tiles
        for image in tile.images
        if image.thumb is not None
    ]
    stats = make_thumbnails(requests, workers=workers, parallelism=parallelism)
    broken = set(stats.failed)  # source images
    base = page.parent.resolve()
    prefixes: dict[Path, str] = {}  # run directory -> its path relative to the page

    def to_card(tile: Tile, caption: str) -> Card:
        return _to_card(tile, caption, prefixes, base, broken)

    sections, grid = build_layout(tiles, x=x, y=y, to_card=to_card)
    title = ", ".join(dict.fromkeys(t.run for t in tiles)) or "batchgen gallery"
    html = render_page(Page(title=title, sections=sections, grid=grid, counts=_counts(tiles)))
    try:
        page.parent.mkdir(parents=True, exist_ok=True)
        tmp = page.with_name(f".{page.name}.{os.getpid()}.tmp")
        tmp.write_text(html, encoding="utf-8")
        os.replace(tmp, page)
    except OSError as exc:
        raise GalleryError(f"cannot write {page}: {exc}") from exc
    return GalleryResult(
        page=page,
        tiles=len(tiles),
        images=sum(len(t.images) for t in tiles),
        placeholders=sum(1 for t in tiles if not t.images),
        thumbs_made=stats.made,
        thumbs_kept=stats.kept,
        thumbs_failed=stats.failed,
        page_bytes=len(html.encode("utf-8")),
    )


def _counts(tiles: Sequence[Tile]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for tile in tiles:
        counts[tile.job.state] = counts.get(tile.job.state, 0) + 1
    return counts


def _to_card(
    tile: Tile, caption: str, prefixes: dict[Path, str], base: Path, broken: set[str]
) -> Card:
    """The page's view of one tile: page-relative links, details for the info panel."""
    job = tile.job
    links = []
    for image in tile.images:
        prefix = prefixes.get(image.run_dir)
        if prefix is None:
            prefix = prefixes[image.run_dir] = _rel(image.run_dir, base)
        href = posixpath.normpath(f"{prefix}/{image.rel}")
        thumb = None
        if image.thumb is not None and str(image.path) not in broken:
            thumb = posixpath.normpath(f"{prefix}/{image.thumb}")
        label = str(image.index) if len(tile.images) > 1 else None
        links.append((href, thumb, image.width, image.height, label))
    seconds = (
        round(job.finished_at - job.submitted_at, 1)
        if job.finished_at is not None and job.submitted_at is not None
        else None
    )
    details: dict[str, Any] = {
        "job": job.job_id,
        "run": tile.run,
        "group": job.group,
        "model": job.model,
        "state": job.state,
        "attempts": job.attempts,
        "vars": dict(job.variables),
        "body": job.body,
        "submitted": job.submitted_at,
        "finished": job.finished_at,
        "seconds": seconds,
        "images": len(tile.images),
    }
    if tile.reason is not None:
        details["reason"] = tile.reason
    return Card(
        caption=caption,
        state=job.state,
        reason=tile.reason,
        images=links,
        details=details,
    )


def _rel(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path.resolve(), base)).as_posix()
