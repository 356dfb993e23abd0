"""The gallery's page: one self-contained HTML file (inline CSS and JS, no network at all).

Contract: every piece of user text (prompts, body values, reasons, run names) is escaped
(:func:`html.escape` in markup; the per-card details travel as JSON in a
``<script type="application/json">`` block with ``<``, ``>`` and ``&`` escaped, and the
script writes them with ``textContent`` only).  Cards come in blocks of :data:`BLOCK`
(in a section or a grid cell) with ``content-visibility: auto``, so the browser lays out
only what is on screen.  A thumbnail's ``<img>`` carries its size and its file in
``data-src``; the page's script gives it its ``src`` at once when its block is on or near
the first screen (so those count in the page's load), else when the block scrolls near (a
browser pays for every ``<img>`` with a ``src`` while it parses a page, lazy or not).
A job with several images shows each thumbnail (two a row) with its index.
Hovering, focusing or clicking a card shows its prompt, template variables, body fields,
model, job ID and timings in a side panel.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any
from urllib.parse import quote

__all__ = ["Card", "Grid", "Page", "Section", "render_page"]

#: Displayed thumbnail box, CSS pixels (thumbnails are made at twice that).
BOX = 128
#: Cards per lazily laid-out block of a section.
BLOCK = 120
_BAD_STATES = frozenset({"failed", "rejected", "expired"})


@dataclass(frozen=True)
class Card:
    """One job on the page."""

    caption: str
    state: str
    reason: str | None  #: why there is no image (None when there is one)
    #: (href of the image, src of its thumbnail or None, width, height, index label or None),
    #: links page-relative
    images: Sequence[tuple[str, str | None, int | None, int | None, str | None]]
    details: Mapping[str, Any]  #: shown in the info panel (JSON-serialisable)


@dataclass(frozen=True)
class Section:
    """A titled list of cards (one job group)."""

    title: str
    subtitle: str
    cards: Sequence[Card]


@dataclass(frozen=True)
class Grid:
    """Cards on two axes: ``cells[(y, x)]``."""

    x_name: str
    y_name: str
    xs: Sequence[str]
    ys: Sequence[str]
    cells: Mapping[tuple[str, str], Sequence[Card]]


@dataclass(frozen=True)
class Page:
    """Everything on the page: the grid (if any), then the sections."""

    title: str
    sections: Sequence[Section] = ()
    grid: Grid | None = None
    counts: Mapping[str, int] = field(default_factory=dict)


_CSS = """
:root{--bg:#f5f5f2;--fg:#1c1c1e;--mut:#6e6e73;--card:#fff;--line:#dedfd9;--bad:#a4262c;
--badbg:#fbeceb;--ok:#2e7d32}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
background:var(--bg);color:var(--fg)}
header{position:sticky;top:0;z-index:3;background:rgba(255,255,255,.95);
border-bottom:1px solid var(--line);padding:10px 20px;display:flex;gap:18px;
align-items:center;flex-wrap:wrap}
h1{font-size:17px;margin:0;font-weight:650}
.counts{display:flex;gap:8px;flex-wrap:wrap}
.pill{font-size:12px;padding:2px 8px;border-radius:999px;background:#ececea;color:var(--mut)}
.pill.done{background:#e6f2e7;color:var(--ok)}
.pill.bad{background:var(--badbg);color:var(--bad)}
header label{font-size:12px;color:var(--mut);margin-left:auto;cursor:pointer}
main{padding:18px 20px 40px}
section{margin:0 0 30px}
h2{font-size:15px;margin:0 0 2px;font-weight:650}
.sub{color:var(--mut);font-size:12px;margin:0 0 10px;overflow-wrap:anywhere}
.blk{display:flex;flex-wrap:wrap;gap:10px;content-visibility:auto;
contain-intrinsic-size:auto 640px}
.c{margin:0;background:var(--card);border:1px solid var(--line);border-radius:7px;
padding:5px;max-width:100%;outline:none}
.c:hover,.c:focus-within,.c:focus{border-color:#9aa0a6;box-shadow:0 1px 6px rgba(0,0,0,.12)}
.ims{display:flex;gap:4px}
.ims.multi{display:grid;grid-template-columns:repeat(2,128px)}
.ims.multi+figcaption{width:260px}
.ims a{display:block;line-height:0;position:relative}
.ix{position:absolute;left:4px;top:4px;min-width:16px;padding:2px 4px;border-radius:4px;
background:rgba(28,28,30,.72);color:#fff;font-size:10.5px;line-height:1.2;text-align:center}
.c img{width:128px;height:128px;object-fit:contain;border-radius:4px;
background:repeating-conic-gradient(#ececec 0 25%,#fafafa 0 50%) 0 0/12px 12px}
figcaption{font-size:11px;line-height:1.3;color:var(--mut);width:128px;margin-top:4px;
display:-webkit-box;-webkit-line-clamp:2;-webkit-box-orient:vertical;overflow:hidden;
overflow-wrap:anywhere}
figcaption:empty{display:none}
.ph{width:128px;height:128px;border-radius:4px;display:flex;flex-direction:column;
justify-content:center;align-items:center;text-align:center;padding:8px;overflow:hidden;
font-size:11px;line-height:1.3;background:#eef0f3;color:var(--mut)}
.bad .ph{background:repeating-linear-gradient(45deg,#fbeceb 0 9px,#f6dfdd 9px 18px);
color:var(--bad)}
.ph b{text-transform:uppercase;letter-spacing:.06em;font-size:10.5px;margin-bottom:4px}
.ph span{overflow-wrap:anywhere;display:-webkit-box;-webkit-line-clamp:5;
-webkit-box-orient:vertical;overflow:hidden}
.grid{display:grid;gap:10px;align-items:start;margin:0 0 30px}
.hx,.hy,.corner{font-size:12.5px;font-weight:600;overflow-wrap:anywhere}
.hx{padding:6px 8px;background:#ebece7;border-radius:6px;position:sticky;top:52px;z-index:2}
.hy{padding:8px;background:#ebece7;border-radius:6px;max-width:220px;align-self:stretch}
.corner{color:var(--mut);font-weight:500;padding:6px 8px}
.cell{padding:6px;min-height:60px;border-radius:7px;border:1px dashed var(--line)}
.cell .blk{gap:8px;contain-intrinsic-size:auto 170px}
.cell .blk+.blk{margin-top:8px}
.empty{border-style:dotted;opacity:.5}
#info{position:fixed;right:16px;bottom:16px;width:380px;max-height:65vh;overflow:auto;
background:#fff;border:1px solid var(--line);border-radius:9px;padding:12px 14px;
font-size:12px;box-shadow:0 6px 28px rgba(0,0,0,.18);display:none;z-index:4}
#info.on{display:block}
#info h3{font-size:13px;margin:0 0 8px;overflow-wrap:anywhere}
#info dl{display:grid;grid-template-columns:auto 1fr;gap:3px 10px;margin:0}
#info dt{color:var(--mut)}
#info dd{margin:0;overflow-wrap:anywhere}
body.fo .c:not(.bad){display:none}
"""

_JS = """
(function(){
var D=JSON.parse(document.getElementById('d').textContent),P=document.getElementById('info'),
pin=false;
function when(t){return t?new Date(t*1000).toISOString().replace('T',' ').slice(0,19)+' UTC':''}
function show(e){var c=e.target.closest&&e.target.closest('.c');if(!c)return;
var d=D[+c.getAttribute('data-i')],b=d.body||{};P.textContent='';
var h=document.createElement('h3');h.textContent=b.prompt||d.job;P.appendChild(h);
var dl=document.createElement('dl');
function row(k,v){if(v===null||v===undefined||v==='')return;var t=document.createElement('dt');
t.textContent=k;var v2=document.createElement('dd');v2.textContent=String(v);
dl.appendChild(t);dl.appendChild(v2)}
row('state',d.state);row('reason',d.reason);row('model',d.model);row('job ID',d.job);
row('run',d.run);row('group',d.group);var v=d.vars||{};
for(var n in v)row(n,typeof v[n]==='string'?v[n]:JSON.stringify(v[n]));
if(d.images>1)row('images',d.images);
for(var k in b){if(k!=='prompt')row(k,typeof b[k]==='string'?b[k]:JSON.stringify(b[k]))}
row('attempts',d.attempts);row('submitted',when(d.submitted));row('finished',when(d.finished));
row('took',d.seconds===null?'':d.seconds+' s');P.appendChild(dl);P.className='on'}
document.addEventListener('mouseover',function(e){if(!pin)show(e)});
document.addEventListener('focusin',function(e){if(!pin)show(e)});
document.addEventListener('click',function(e){var t=e.target;
if(t.closest('#info'))return;var c=t.closest('.c');
if(c&&!t.closest('a')){pin=true;show(e)}else{pin=false}});
document.addEventListener('keydown',function(e){if(e.key==='Escape'){pin=false;P.className=''}});
var f=document.getElementById('fo');
f.addEventListener('change',function(){document.body.classList.toggle('fo',f.checked)});
function load(b){var im=b.querySelectorAll('img[data-src]');for(var i=0;i<im.length;i++){
im[i].src=im[i].getAttribute('data-src');im[i].removeAttribute('data-src')}}
var bs=document.querySelectorAll('.blk'),near=innerHeight+1200,io=null;
if('IntersectionObserver' in window){io=new IntersectionObserver(function(es){
es.forEach(function(e){if(e.isIntersecting){io.unobserve(e.target);load(e.target)}})},
{rootMargin:'1200px 0px'})}
for(var i=0;i<bs.length;i++){
if(!io||bs[i].getBoundingClientRect().top<near)load(bs[i]);else io.observe(bs[i])}
document.documentElement.setAttribute('data-cards',String(D.length));
})();
"""


def _json_for_script(value: Any) -> str:
    """JSON that cannot end its ``<script>`` element or open markup."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return (
        text.replace("&", "\\u0026")
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def _href(path: str) -> str:
    return escape(quote(path, safe="/._-~"), quote=True)


def _box(width: int | None, height: int | None) -> tuple[int, int]:
    if not width or not height:
        return BOX, BOX
    if width >= height:
        return BOX, max(1, round(BOX * height / width))
    return max(1, round(BOX * width / height)), BOX


class _Writer:
    """Accumulates the page's markup and each card's details (indexed by ``data-i``)."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.details: list[Mapping[str, Any]] = []

    def card(self, card: Card) -> None:
        i = len(self.details)
        self.details.append(card.details)
        bad = card.state in _BAD_STATES
        cls = "c bad" if bad else "c"
        out = self.parts
        if not card.images:
            out.append(
                f'<figure class="{cls}" data-i="{i}" tabindex="0"><div class="ph">'
                f"<b>{escape(card.state)}</b><span>{escape(card.reason or '')}</span></div>"
            )
        else:
            ims = "ims multi" if len(card.images) > 1 else "ims"
            out.append(f'<figure class="{cls}" data-i="{i}"><div class="{ims}">')
            for href, thumb, width, height, label in card.images:
                badge = f'<span class="ix">{escape(label)}</span>' if label is not None else ""
                if thumb is None:
                    out.append(
                        f'<a href="{_href(href)}"><div class="ph"><b>no thumbnail</b>'
                        f"<span>open the image</span></div>{badge}</a>"
                    )
                    continue
                w, h = _box(width, height)
                out.append(
                    f'<a href="{_href(href)}"><img loading="lazy" decoding="async" '
                    f'data-src="{_href(thumb)}" width="{w}" height="{h}" alt="">{badge}</a>'
                )
            out.append("</div>")
        out.append(f"<figcaption>{escape(card.caption)}</figcaption></figure>")

    def blocks(self, cards: Sequence[Card]) -> None:
        """``cards`` in blocks of :data:`BLOCK`, each laid out and loaded on its own."""
        for start in range(0, len(cards), BLOCK):
            self.parts.append('<div class="blk">')
            for card in cards[start : start + BLOCK]:
                self.card(card)
            self.parts.append("</div>")


def _sections(w: _Writer, sections: Sequence[Section]) -> None:
    for section in sections:
        w.parts.append(
            f"<section><h2>{escape(section.title)} "
            f'<span class="pill">{len(section.cards)}</span></h2>'
            f'<p class="sub">{escape(section.subtitle)}</p>'
        )
        w.blocks(section.cards)
        w.parts.append("</section>")


def _grid(w: _Writer, grid: Grid) -> None:
    corner = " / ".join(
        part
        for part in (
            f"{grid.y_name} ↓" if grid.y_name else "",
            f"{grid.x_name} →" if grid.x_name else "",
        )
        if part
    )
    columns = f"{'max-content ' if grid.y_name else ''}repeat({len(grid.xs)},minmax(150px,1fr))"
    w.parts.append(f'<div class="grid" style="grid-template-columns:{columns}">')
    if grid.y_name:
        w.parts.append(f'<div class="corner">{escape(corner)}</div>')
    for xv in grid.xs:
        label = f"{grid.x_name} = {xv}" if grid.x_name else corner
        w.parts.append(f'<div class="hx">{escape(label)}</div>')
    for yv in grid.ys:
        if grid.y_name:
            w.parts.append(f'<div class="hy">{escape(yv)}</div>')
        for xv in grid.xs:
            cards = grid.cells.get((yv, xv), ())
            w.parts.append(f'<div class="cell{"" if cards else " empty"}">')
            w.blocks(cards)
            w.parts.append("</div>")
    w.parts.append("</div>")


def render_page(page: Page) -> str:
    """The whole page as text."""
    w = _Writer()
    if page.grid is not None:
        _grid(w, page.grid)
    _sections(w, page.sections)
    pills = []
    for state, n in page.counts.items():
        kind = "done" if state == "done" else "bad" if state in _BAD_STATES else ""
        pills.append(f'<span class="pill {kind}">{escape(state)} {n}</span>')
    body = "".join(w.parts)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "img-src 'self' data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
        f"<title>{escape(page.title)} · batchgen gallery</title><style>{_CSS}</style></head>"
        f'<body><header><h1>{escape(page.title)}</h1><div class="counts">{"".join(pills)}</div>'
        '<label><input type="checkbox" id="fo"> failures only</label></header>'
        f"<main>{body}</main>"
        '<aside id="info" aria-live="polite"></aside>'
        f'<script type="application/json" id="d">{_json_for_script(w.details)}</script>'
        f"<script>{_JS}</script></body></html>\n"
    )
