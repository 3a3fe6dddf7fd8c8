"""The HTML audit report: one self-contained file (inline CSS and SVG, no scripts to run).

It opens with the period and the verification status, then counts by day (a stacked SVG
chart by outcome), by action and by actor, then the events. The events are also embedded as
JSON (``<script type="application/json" id="pai-audit-events">``) so the offline verifier can
compare them with the signed log.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import date, timedelta
from html import escape
from typing import Any

from pai.audit.chain import OUTCOMES, Event

COLORS = {"ok": "#2f855a", "denied": "#b7791f", "failed": "#c53030"}

CSS = """
*{box-sizing:border-box}body{margin:0;font:14px/1.45 -apple-system,"Segoe UI",Roboto,
"Helvetica Neue",Arial,sans-serif;color:#1a202c;background:#f4f5f7}
main{max-width:1240px;margin:0 auto;padding:28px 32px 48px}
header{display:flex;justify-content:space-between;align-items:flex-end;border-bottom:3px solid
#1a365d;padding-bottom:14px;margin-bottom:20px}h1{margin:0;font-size:26px;color:#1a365d}
.sub{color:#4a5568;margin-top:4px}.meta{text-align:right;color:#4a5568;font-size:13px}
h2{font-size:17px;margin:28px 0 10px;color:#1a365d}
.status{border-radius:8px;padding:16px 20px;display:flex;gap:18px;align-items:center;
border:1px solid}.status.ok{background:#f0fff4;border-color:#9ae6b4}
.status.bad{background:#fff5f5;border-color:#feb2b2}.badge{font-weight:700;font-size:18px}
.status.ok .badge{color:#276749}.status.bad .badge{color:#9b2c2c}
.status dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:0;
font-size:13px}.status dt{color:#4a5568}.status dd{margin:0;font-family:ui-monospace,
SFMono-Regular,Menlo,monospace;word-break:break-all}
.cards{display:grid;grid-template-columns:repeat(5,1fr);gap:12px;margin-top:18px}
.card{background:#fff;border:1px solid #e2e8f0;border-radius:8px;padding:12px 14px}
.card .n{font-size:24px;font-weight:700}.card .l{color:#4a5568;font-size:12px;
text-transform:uppercase;letter-spacing:.04em}
.panel{background:#fff;border:1px solid #e2e8f0;border-radius:8px;padding:14px;overflow-x:auto}
td.mono{overflow-wrap:anywhere}
.two{display:grid;grid-template-columns:1fr 1fr;gap:16px}
table{border-collapse:collapse;width:100%;font-size:13px}
th{text-align:left;background:#edf2f7;color:#2d3748;font-weight:600;padding:6px 8px;
border-bottom:1px solid #cbd5e0;position:sticky;top:0}
td{padding:5px 8px;border-bottom:1px solid #edf2f7;vertical-align:top}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tr:nth-child(even) td{background:#fafbfc}
.mono{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px}
.pill{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;color:#fff}
.legend span{display:inline-flex;align-items:center;margin-right:14px;font-size:12px}
.legend i{width:11px;height:11px;border-radius:2px;margin-right:5px;display:inline-block}
footer{margin-top:30px;color:#4a5568;font-size:12px;border-top:1px solid #cbd5e0;
padding-top:12px}code{background:#edf2f7;padding:1px 5px;border-radius:3px}
@media print{body{background:#fff}main{padding:0}.panel,.card{break-inside:avoid}
th{position:static}}
"""


def _pill(outcome: str) -> str:
    color = COLORS.get(outcome, "#4a5568")
    return f'<span class="pill" style="background:{color}">{escape(outcome)}</span>'


def _short(text: str, limit: int = 140) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _days(events: list[Event], since: str | None, until: str | None, now: str) -> list[str]:
    """Every day of the period (only days with events when it spans more than 400 days)."""
    if not events:
        return []
    first = date.fromisoformat(min(since or events[0].time, events[0].time)[:10])
    end = min(until or now, now)
    last = date.fromisoformat(end[:10])
    if end[10:] == "T00:00:00Z":
        last -= timedelta(days=1)
    last = max(last, date.fromisoformat(events[-1].time[:10]))
    if (last - first).days > 400:
        return sorted({e.time[:10] for e in events})
    return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


def _nice_max(peak: int) -> int:
    """The top of the y axis: four gridline steps of 1, 2, 2.5 or 5 times a power of ten."""
    power = 1
    while True:
        for factor in (1, 2, 2.5, 5):
            step = factor * power
            if step == int(step) and step * 4 >= peak:
                return int(step * 4)
        power *= 10


def _chart(days: list[str], per_day: dict[str, Counter[str]]) -> str:
    """A stacked bar chart of events per day by outcome."""
    width, height, left, bottom, top = 1150, 250, 48, 38, 12
    plot_w, plot_h = width - left - 10, height - bottom - top
    peak = max((sum(per_day[d].values()) for d in days), default=0) or 1
    scale_max = _nice_max(peak)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" '
        'role="img" aria-label="events per day by outcome">'
    ]
    for i in range(5):
        value = scale_max * i // 4
        y = top + plot_h - plot_h * i / 4
        parts.append(
            f'<line x1="{left}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e2e8f0"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" '
            f'fill="#4a5568">{value}</text>'
        )
    slot = plot_w / max(len(days), 1)
    bar = max(min(slot * 0.7, 40), 1)
    label_every = max(1, round(len(days) / 16))
    for index, day in enumerate(days):
        x = left + slot * index + (slot - bar) / 2
        y = top + plot_h
        for outcome in OUTCOMES:
            count = per_day[day][outcome]
            if not count:
                continue
            h = plot_h * count / scale_max
            y -= h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                f'fill="{COLORS[outcome]}"><title>{day} {outcome}: {count}</title></rect>'
            )
        if index % label_every == 0:
            parts.append(
                f'<text x="{x + bar / 2:.1f}" y="{top + plot_h + 16}" font-size="11" '
                f'text-anchor="middle" fill="#4a5568">{day[5:]}</text>'
            )
    parts.append(
        f'<line x1="{left}" x2="{width - 10}" y1="{top + plot_h}" y2="{top + plot_h}" '
        'stroke="#a0aec0"/></svg>'
    )
    return "".join(parts)


def _breakdown(title: str, counts: dict[str, Counter[str]]) -> str:
    rows = sorted(counts.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
    body = (
        "".join(
            f'<tr><td class="mono">{escape(name)}</td>'
            + "".join(f'<td class="num">{c[o] or ""}</td>' for o in OUTCOMES)
            + f'<td class="num"><b>{sum(c.values())}</b></td></tr>'
            for name, c in rows
        )
        or '<tr><td colspan="5">no events</td></tr>'
    )
    head = "".join(f'<th class="num">{o}</th>' for o in OUTCOMES)
    return (
        f'<div class="panel"><h2 style="margin-top:0">{title}</h2><table><thead><tr><th>'
        f'{title.split()[-1]}</th>{head}<th class="num">total</th></tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def _status(verification: dict[str, Any], node: str | None) -> str:
    if verification.get("ok"):
        latest = verification.get("latest_checkpoint") or {}
        rows = [
            ("chain", f"{verification['events']} events, every hash and link checked"),
            ("head", verification["head_hash"]),
            ("signed checkpoints", f"{verification['checkpoints']} verified"),
            ("signer key id", verification.get("signer_kid") or "none"),
        ]
        if latest:
            rows.append(("latest checkpoint", f"seq {latest['seq']} at {latest['time']}"))
            rows.append(("Merkle root", latest["merkle_root"]))
        if verification.get("segments"):
            rows.append(
                (
                    "sealed segments",
                    f"{verification['segments']} ({verification['sealed_events']} events)",
                )
            )
        for warning in verification.get("warnings", []):
            rows.append(("note", warning))
        badge, css = "&#10004; Verified", "ok"
    else:
        rows = [
            ("failed check", verification.get("code", "")),
            ("first bad seq", str(verification.get("first_bad_seq"))),
            ("detail", verification.get("message", "")),
            ("node key id", node or "none"),
        ]
        badge, css = "&#10008; NOT verified", "bad"
    items = "".join(f"<dt>{escape(k)}</dt><dd>{escape(str(v))}</dd>" for k, v in rows)
    return f'<div class="status {css}"><div class="badge">{badge}</div><dl>{items}</dl></div>'


def html_report(events: list[Event], context: dict[str, Any]) -> str:
    sel = context["selection"]
    since, until = sel.get("since"), sel.get("until")
    per_day: dict[str, Counter[str]] = defaultdict(Counter)
    by_action: dict[str, Counter[str]] = defaultdict(Counter)
    by_actor: dict[str, Counter[str]] = defaultdict(Counter)
    for e in events:
        per_day[e.time[:10]][e.outcome] += 1
        by_action[e.action][e.outcome] += 1
        by_actor[e.actor][e.outcome] += 1
    totals = Counter(e.outcome for e in events)
    days = _days(events, since, until, context["generated"])
    period = f"{since or 'start of the log'} &ndash; {until or context['generated']}"
    filters = (
        ", ".join(
            f"{k} = <code>{escape(str(v))}</code>"
            for k, v in sel.items()
            if k in ("actor", "action", "outcome") and v is not None
        )
        or "none (all events of the period)"
    )
    cards = "".join(
        f'<div class="card"><div class="n" style="color:{color}">{n}</div>'
        f'<div class="l">{label}</div></div>'
        for n, label, color in (
            (len(events), "events", "#1a365d"),
            (totals["ok"], "ok", COLORS["ok"]),
            (totals["denied"], "denied", COLORS["denied"]),
            (totals["failed"], "failed", COLORS["failed"]),
            (len(by_actor), "distinct actors", "#1a365d"),
        )
    )
    day_rows = "".join(
        f'<tr><td class="mono">{d}</td>'
        + "".join(f'<td class="num">{per_day[d][o] or ""}</td>' for o in OUTCOMES)
        + f'<td class="num"><b>{sum(per_day[d].values())}</b></td><td class="mono">'
        + escape(
            ", ".join(
                f"{a} {n}"
                for a, n in Counter(e.action for e in events if e.time.startswith(d)).most_common(3)
            )
        )
        + "</td></tr>"
        for d in days
        if per_day[d]
    )
    event_rows = (
        "".join(
            f'<tr><td class="num mono">{e.seq}</td><td class="mono">{e.time}</td>'
            f'<td class="mono">{escape(e.actor)}</td><td class="mono">{escape(e.action)}</td>'
            f'<td class="mono">{escape(e.resource)}</td><td>{_pill(e.outcome)}</td>'
            f'<td class="mono">{escape(_short(e.details))}</td>'
            f'<td class="mono" title="{e.hash}">{e.hash[:12]}</td></tr>'
            for e in events
        )
        or '<tr><td colspan="8">no events match</td></tr>'
    )
    embedded = json.dumps([e.record() for e in events], ensure_ascii=False, sort_keys=True)
    embedded = embedded.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    legend = "".join(f'<span><i style="background:{COLORS[o]}"></i>{o}</span>' for o in OUTCOMES)
    node = context.get("node") or "unknown"
    outcome_heads = "".join(f'<th class="num">{o}</th>' for o in OUTCOMES)
    day_rows = day_rows or '<tr><td colspan="6">no events</td></tr>'
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Audit log report &mdash; node {escape(node)}</title><style>{CSS}</style></head>
<body><main>
<header><div><h1>Audit log report</h1>
<div class="sub">Period {period}</div><div class="sub">Filters: {filters}</div></div>
<div class="meta">node key <span class="mono">{escape(node)}</span>
<br>generated {context["generated"]}
<br>{context["total_events"]} events in the whole log</div></header>
<h2>Verification</h2>{_status(context["verification"], context.get("node"))}
<div class="cards">{cards}</div>
<h2>Events per day by outcome</h2>
<div class="panel"><div class="legend">{legend}</div>{_chart(days, per_day)}</div>
<div class="two" style="margin-top:16px">{_breakdown("By action", by_action)}
{_breakdown("By actor", by_actor)}</div>
<h2>Per day</h2><div class="panel"><table><thead><tr><th>day</th>{outcome_heads}
<th class="num">total</th><th>most frequent actions</th></tr></thead>
<tbody>{day_rows}</tbody></table></div>
<h2>Events ({len(events)})</h2><div class="panel"><table><thead><tr><th class="num">seq</th>
<th>time (UTC)</th><th>actor</th><th>action</th><th>resource</th><th>outcome</th><th>details</th>
<th>hash</th></tr></thead><tbody>{event_rows}</tbody></table></div>
<footer>Each event's hash is sha256(prev_hash || canonical JSON of the event); checkpoints
signed with the node's Ed25519 key commit to the chain's head and to an RFC 6962 Merkle root.
Check this log on the node with <code>pai audit verify --pubkey node.pub --checkpoints COPY</code>,
or check an evidence export offline with <code>python3 verify_evidence.py</code>. The format is
described in pai's docs/formats/audit.md.</footer>
<script type="application/json" id="pai-audit-events">{embedded}</script>
</main></body></html>
"""
