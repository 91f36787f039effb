"""The live status page at ``/``: one self-contained HTML document rendered from the same dict
``/status`` serves, so the page and the JSON always agree.

No external assets (it works air-gapped): the CSS and the refresh script are inline. The first
view is complete without JavaScript; the script then fetches ``/status`` every 2 s and rewrites
every element that carries a ``data-k`` (a JSON path into the status dict) and ``data-f`` (how to
format it), with the same formatters as here. When the set of endpoints, channels or credentials
changes, it fetches ``/`` again and swaps the page body (still no reload).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any


__all__ = ["render_login", "render_page", "fmt"]

_DASH = "\u2013"  # an en dash: "no value"


# --------------------------------------------------------------------------- formatting
# Mirrored in _SCRIPT's ``F`` table: keep the two in step.


def _age(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return _DASH
    s = int(max(0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def _int(value: Any) -> str:
    return f"{int(value):,}" if isinstance(value, int | float) else _DASH


def _rate(value: Any) -> str:
    return f"{value:,.1f}/s" if isinstance(value, int | float) else _DASH


def _until(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return _DASH
    return f"in {_age(seconds)}" if seconds >= 0 else f"expired {_age(-seconds)} ago"


def _counts(value: Any) -> str:
    if not isinstance(value, Mapping) or not value:
        return "none"
    return " · ".join(f"{k} {int(v)}" for k, v in sorted(value.items()))


def _record(value: Any) -> str:
    if not isinstance(value, Mapping) or not value:
        return "none"
    return ", ".join(f"{k}={v}" for k, v in value.items())


def _text(value: Any) -> str:
    if value is None or value == "":
        return _DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


_FORMATS = {
    "age": _age,
    "int": _int,
    "rate": _rate,
    "until": _until,
    "counts": _counts,
    "record": _record,
    "text": _text,
    "state": _text,
}


def fmt(kind: str, value: Any) -> str:
    """``value`` as the page shows it (``kind`` is a ``data-f`` name)."""
    return _FORMATS[kind](value)


def _path(path: Any) -> str:
    # Compact, so a test or a person can select ``[data-k='["endpoints","orders","state"]']``.
    return json.dumps(path, separators=(",", ":"))


def _lookup(status: Mapping[str, Any], path: Sequence[str]) -> Any:
    value: Any = status
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


# --------------------------------------------------------------------------- building blocks


class _Page:
    """Renders bound elements against one status dict."""

    def __init__(self, status: Mapping[str, Any]) -> None:
        self.status = status

    def val(self, kind: str, *path: str, tag: str = "span", cls: str = "") -> str:
        value = _lookup(self.status, path)
        classes = cls
        if kind == "state":
            classes = f"{cls} state state-{_state_class(value)}".strip()
        attrs = f' data-k="{escape(_path(path))}" data-f="{kind}"'
        if classes:
            attrs += f' class="{classes}"'
        return f"<{tag}{attrs}>{escape(fmt(kind, value))}</{tag}>"

    def spark(self, *path: str) -> str:
        values = _lookup(self.status, path)
        points = _spark_points(values if isinstance(values, list) else [])
        return (
            f'<svg class="spark" viewBox="0 0 120 28" preserveAspectRatio="none" '
            f'data-spark="{escape(_path(path))}" role="img" aria-label="last 5 minutes">'
            f'<polygon points="{_area(points)}"/><polyline points="{points}"/></svg>'
        )

    def bar(self, value_path: Sequence[str], cap_path: Sequence[str]) -> str:
        value, cap = _lookup(self.status, value_path), _lookup(self.status, cap_path)
        return (
            f'<span class="meter"><span data-bar="{escape(_path([value_path, cap_path]))}" '
            f'style="width:{_percent(value, cap):.1f}%"></span></span>'
        )


def _state_class(value: Any) -> str:
    return "".join(c for c in str(value) if c.isalnum() or c == "_") or "unknown"


def _percent(value: Any, cap: Any) -> float:
    if not isinstance(value, int | float) or not isinstance(cap, int | float) or cap <= 0:
        return 0.0
    return max(0.0, min(100.0, 100.0 * value / cap))


def _spark_points(values: Sequence[Any]) -> str:
    nums = [float(v) for v in values if isinstance(v, int | float)]
    if not nums:
        return ""
    top = max(nums) or 1.0
    step = 120 / max(1, len(nums) - 1)
    return " ".join(f"{i * step:.1f},{26 - 24 * v / top:.1f}" for i, v in enumerate(nums))


def _area(points: str) -> str:
    # The line closed along the bottom edge: the shaded area under the sparkline.
    return f"0,28 {points} 120,28" if points else ""


def _stat(label: str, body: str) -> str:
    return f'<div class="stat"><div class="label">{escape(label)}</div><div>{body}</div></div>'


def _endpoint(page: _Page, name: str, ep: Mapping[str, Any]) -> str:
    e = ("endpoints", name)
    role = ""
    if "role" in ep:
        role = page.val("text", *e, "role", cls="role")
        if "replica" in ep:
            role += " " + page.val("text", *e, "replica", cls="muted")
    stats = [
        _stat("Connection", page.val("text", *e, "connection_type")),
        _stat("Session age", page.val("age", *e, "client_id_age_seconds")),
        _stat(
            "Received",
            f"{page.val('int', *e, 'received_total', cls='big')} "
            f"{page.val('rate', *e, 'received_per_second', cls='muted')}"
            f"{page.spark(*e, 'rate_history', 'received_per_second')}",
        ),
        _stat(
            "Published (confirmed)",
            f"{page.val('int', *e, 'confirmed_total', cls='big')} "
            f"{page.val('rate', *e, 'published_per_second', cls='muted')}"
            f"{page.spark(*e, 'rate_history', 'published_per_second')}",
        ),
        _stat(
            "Pending / capacity",
            f"{page.val('int', *e, 'pending')} / {page.val('int', *e, 'pending_capacity')}"
            f"{page.bar((*e, 'pending'), (*e, 'pending_capacity'))}",
        ),
        _stat("In flight", page.val("int", *e, "inflight")),
        _stat(
            "Reconnects",
            f"{page.val('int', *e, 'reconnects')} "
            f"<div class='small'>{page.val('counts', *e, 'reconnects_by_reason')}</div>",
        ),
        _stat("Last message", page.val("age", *e, "last_message_age_seconds") + " ago"),
        _stat(
            "Gap records",
            f"{page.val('int', *e, 'gaps')} "
            f"<div class='small'>{page.val('record', *e, 'last_gap')}</div>",
        ),
    ]
    rows = []
    positions = ep.get("positions")
    if isinstance(positions, Mapping) and positions:
        for channel in positions:
            p = (*e, "positions", channel)
            rows.append(
                f'<tr data-channel="{escape(channel)}"><td>{escape(channel)}</td>'
                f"<td>{page.val('text', *p, 'replay_id')}</td>"
                f"<td>{page.val('age', *p, 'age_seconds')}</td></tr>"
            )
    else:
        for channel in ep.get("channels") or ():
            rows.append(
                f"<tr><td>{escape(str(channel))}</td><td>{_DASH}</td>"
                f'<td class="muted">replay {escape(_text(ep.get("replay")))}</td></tr>'
            )
    channels = (
        '<table class="channels"><thead><tr><th>Channel</th><th>Replay position</th>'
        f"<th>Position age</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )
    return (
        f'<section class="card" data-endpoint="{escape(name)}">'
        f'<h2><span class="name">{escape(name)}</span> {page.val("state", *e, "state")} {role}'
        f'<span class="url muted">{escape(_text(ep.get("url")))}</span></h2>'
        f'<div class="grid">{"".join(stats)}</div>'
        f'<div class="error"><span class="label">Last error</span> '
        f"{page.val('text', *e, 'last_error')}</div>"
        f"{channels}</section>"
    )


def _replica_facts(page: _Page, status: Mapping[str, Any]) -> str:
    """The process's role and replica name, once several replicas share the work."""
    facts = ""
    if "role" in status:
        facts += f"<span>role {page.val('text', 'role', cls='role')}</span>"
    if "replica" in status:
        facts += f"<span>replica {page.val('text', 'replica')}</span>"
    return facts


def _main(status: Mapping[str, Any]) -> str:
    page = _Page(status)
    endpoints = status.get("endpoints") or {}
    credentials = status.get("credentials") or {}
    head = (
        '<header><h1>cometd-bridge</h1><div class="facts">'
        f"<span>version {escape(_text(status.get('version')))}</span>"
        f"<span>up {page.val('age', 'uptime_seconds')}</span>"
        f"<span>ready {page.val('state', 'ready')}</span>"
        f"{_replica_facts(page, status)}"
        f"<span>AMQP {page.val('state', 'amqp', 'connected')} "
        f'<span class="muted">{escape(_text(_lookup(status, ("amqp", "url"))))}</span></span>'
        "</div></header>"
    )
    startup = page.val("text", "startup_error") if status.get("startup_error") else ""
    cred_rows = "".join(
        f'<tr data-credential="{escape(name)}"><td>{escape(name)}</td>'
        f"<td>{page.val('until', 'credentials', name, 'expires_in_seconds')}</td></tr>"
        for name in credentials
    )
    creds = (
        '<section class="card"><h2>Credentials</h2><table class="channels">'
        f"<thead><tr><th>Credential</th><th>Token expires</th></tr></thead>"
        f"<tbody>{cred_rows}</tbody></table></section>"
        if credentials
        else ""
    )
    cards = "".join(_endpoint(page, name, ep) for name, ep in endpoints.items())
    if not endpoints:
        cards = '<section class="card muted">No endpoint started yet.</section>'
    return f'<main id="main">{head}{startup}{cards}{creds}</main>'


def render_page(status: Mapping[str, Any]) -> str:
    """The whole page for ``status`` (the redacted dict ``/status`` serves)."""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>cometd-bridge status</title>"
        # An empty inline icon: the browser asks the bridge for no /favicon.ico.
        '<link rel="icon" href="data:,">'
        # Without JavaScript the page still refreshes itself, just less often.
        '<noscript><meta http-equiv="refresh" content="10"></noscript>'
        f"<style>{_CSS}</style></head><body>{_main(status)}"
        '<footer class="muted">Refreshed every 2 s from <a href="status">/status</a>'
        ' · <span id="refreshed">server-rendered</span></footer>'
        f"<script>{_SCRIPT}</script></body></html>"
    )


def render_login(error: str | None = None) -> str:
    """The form that trades the HTTP token for a cookie."""
    message = f'<p class="error">{escape(error)}</p>' if error else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        "<title>cometd-bridge status: sign in</title>"
        '<link rel="icon" href="data:,">'
        f"<style>{_CSS}</style></head><body><main>"
        '<section class="card login"><h2>cometd-bridge status</h2>'
        f"{message}"
        '<form method="post" action="login"><label for="token">HTTP token</label> '
        '<input id="token" name="token" type="password" autocomplete="current-password" '
        'required autofocus> <button type="submit">Sign in</button></form>'
        "</section></main></body></html>"
    )


_CSS = """
:root{--bg:#f4f6f8;--card:#fff;--ink:#1d2733;--muted:#6b7785;--line:#e1e6eb;--ok:#1a7f37;
--warn:#b35900;--bad:#c62828;--accent:#2f6feb}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
main{max-width:1200px;margin:0 auto;padding:16px 20px}
header{display:flex;flex-wrap:wrap;align-items:baseline;gap:8px 24px;margin-bottom:12px}
h1{font-size:20px;margin:0}
.facts{display:flex;flex-wrap:wrap;gap:6px 18px}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:14px 16px;
margin-bottom:14px;box-shadow:0 1px 2px rgba(0,0,0,.04)}
h2{font-size:16px;margin:0 0 10px;display:flex;flex-wrap:wrap;align-items:center;gap:8px}
.url{font-weight:normal;font-size:12px;margin-left:auto}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:10px 16px}
.stat{border-left:3px solid var(--line);padding-left:8px}
.label{color:var(--muted);font-size:11px;text-transform:uppercase;letter-spacing:.04em}
.big{font-size:20px;font-weight:600;font-variant-numeric:tabular-nums}
.small{font-size:12px;color:var(--muted)}
.muted{color:var(--muted)}
.state{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;
background:#e8eaed;color:var(--ink)}
.state-streaming,.state-yes,.state-True,.state-true{background:#dcf5e3;color:var(--ok)}
.state-reconnecting,.state-paused,.state-starting{background:#fff0d9;color:var(--warn)}
.state-failed,.state-no,.state-False,.state-false{background:#fde2e1;color:var(--bad)}
.role{font-size:12px;border:1px solid var(--line);border-radius:10px;padding:0 8px}
.spark{display:block;width:100%;max-width:160px;height:28px;margin-top:2px}
.spark polygon{fill:#2f6feb;fill-opacity:.12;stroke:none}
.spark polyline{fill:none;stroke:var(--accent);stroke-width:1.5;vector-effect:non-scaling-stroke}
.meter{display:block;height:6px;background:var(--line);border-radius:3px;margin-top:4px;
max-width:160px;overflow:hidden}
.meter span{display:block;height:100%;background:var(--accent)}
.error{margin:10px 0 4px;font-size:13px;word-break:break-word}
table{border-collapse:collapse;width:100%;margin-top:8px;font-variant-numeric:tabular-nums}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid var(--line);font-size:13px}
th{color:var(--muted);font-weight:600;font-size:11px;text-transform:uppercase}
footer{max-width:1200px;margin:0 auto;padding:0 20px 16px;font-size:12px}
.login{max-width:420px;margin:60px auto}
input{padding:6px 8px;border:1px solid var(--line);border-radius:4px;min-width:200px}
button{padding:6px 12px;border:0;border-radius:4px;background:var(--accent);color:#fff}
p.error{color:var(--bad)}
"""

_SCRIPT = """
(function(){
var D='\\u2013';
function age(s){if(typeof s!=='number')return D;s=Math.floor(Math.max(0,s));
function p(n){return(n<10?'0':'')+n;}
if(s<60)return s+'s';if(s<3600)return Math.floor(s/60)+'m '+p(s%60)+'s';
if(s<86400)return Math.floor(s/3600)+'h '+p(Math.floor(s%3600/60))+'m';
return Math.floor(s/86400)+'d '+Math.floor(s%86400/3600)+'h';}
function num(v,d){
return v.toLocaleString('en-US',{minimumFractionDigits:d,maximumFractionDigits:d});}
function text(v){if(v===null||v===undefined||v==='')return D;
if(typeof v==='boolean')return v?'yes':'no';return String(v);}
var F={age:age,
int:function(v){return typeof v==='number'?num(Math.trunc(v),0):D;},
rate:function(v){return typeof v==='number'?num(v,1)+'/s':D;},
until:function(v){return typeof v!=='number'?D:(v>=0?'in '+age(v):'expired '+age(-v)+' ago');},
counts:function(v){if(!v||typeof v!=='object')return 'none';var k=Object.keys(v).sort();
if(!k.length)return 'none';
return k.map(function(x){return x+' '+Math.trunc(v[x]);}).join(' \\u00b7 ');},
record:function(v){if(!v||typeof v!=='object')return 'none';var k=Object.keys(v);
if(!k.length)return 'none';return k.map(function(x){return x+'='+v[x];}).join(', ');},
text:text,state:text};
function get(o,path){for(var i=0;i<path.length;i++){if(o===null||typeof o!=='object')return null;
o=o[path[i]];}return o===undefined?null:o;}
function cls(v){return (String(v).replace(/[^A-Za-z0-9_]/g,'')||'unknown');}
function points(vs){var n=(vs||[]).filter(function(v){return typeof v==='number';});
if(!n.length)return '';var top=Math.max.apply(null,n)||1,step=120/Math.max(1,n.length-1);
return n.map(function(v,i){return (i*step).toFixed(1)+','+(26-24*v/top).toFixed(1);}).join(' ');}
function shapeChanged(s){var eps=Object.keys(s.endpoints||{});
if(document.querySelectorAll('[data-endpoint]').length!==eps.length)return true;
for(var i=0;i<eps.length;i++){
var card=document.querySelector('[data-endpoint="'+CSS.escape(eps[i])+'"]');
if(!card)return true;var pos=Object.keys((s.endpoints[eps[i]]||{}).positions||{});
if(card.querySelectorAll('[data-channel]').length!==pos.length)return true;}
return document.querySelectorAll('[data-credential]').length!==
Object.keys(s.credentials||{}).length;}
function apply(s){
document.querySelectorAll('[data-k]').forEach(function(el){var v=get(s,JSON.parse(el.dataset.k));
var f=el.dataset.f;el.textContent=(F[f]||text)(v);
if(f==='state'){el.className=el.className.replace(/\\bstate-\\S+/g,'')+' state-'+cls(v);}});
document.querySelectorAll('[data-spark]').forEach(function(el){
var pts=points(get(s,JSON.parse(el.dataset.spark)));
el.querySelector('polyline').setAttribute('points',pts);
el.querySelector('polygon').setAttribute('points',pts?'0,28 '+pts+' 120,28':'');});
document.querySelectorAll('[data-bar]').forEach(function(el){var p=JSON.parse(el.dataset.bar);
var v=get(s,p[0]),c=get(s,p[1]);var w=(typeof v==='number'&&typeof c==='number'&&c>0)?
Math.max(0,Math.min(100,100*v/c)):0;el.style.width=w.toFixed(1)+'%';});}
var stamp=document.getElementById('refreshed');
function tick(){fetch('status',{credentials:'same-origin',cache:'no-store'})
.then(function(r){if(r.status===401){location.href='login';throw new Error('signed out');}
if(!r.ok)throw new Error('HTTP '+r.status);return r.json();})
.then(function(s){if(shapeChanged(s)){
return fetch('./',{credentials:'same-origin',cache:'no-store'})
.then(function(r){return r.text();}).then(function(h){
var d=new DOMParser().parseFromString(h,'text/html');
var m=d.getElementById('main');if(m)document.getElementById('main').replaceWith(m);});}
apply(s);}).then(function(){stamp.textContent='updated '+new Date().toLocaleTimeString();})
.catch(function(e){stamp.textContent='update failed: '+e.message;});}
setInterval(tick,2000);
})();
"""
