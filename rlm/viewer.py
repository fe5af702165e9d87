"""Self-contained HTML views of trajectories: `rlm view RESULT.json` writes one page (no network
assets); `rlm view results/` writes an index with a sortable table and a page per rollout.

Everything a model wrote is escaped: trajectories are hostile input to a browser too.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from .trajectory import Result, SubCall, Turn

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d232b}
header{background:#1d232b;color:#fff;padding:14px 22px} header h1{margin:0;font-size:18px}
main{padding:16px 22px;max-width:1200px} section{background:#fff;border:1px solid #dde1e6;border-radius:6px;margin:12px 0;padding:12px 16px}
pre{background:#f0f2f5;padding:8px;border-radius:4px;overflow:auto;max-height:420px;white-space:pre-wrap;word-break:break-word}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;background:#e4e7eb;margin-right:6px;font-size:12px}
.ready{background:#c9f2d0}.error,.timeout,.budget{background:#f8d0d0}.max_turns{background:#f7e7b5}
.warn{color:#a33;font-weight:600} table{border-collapse:collapse;width:100%} td,th{border-bottom:1px solid #e4e7eb;padding:4px 8px;text-align:left;vertical-align:top}
th{cursor:pointer;background:#f0f2f5;user-select:none} details{margin:6px 0} summary{cursor:pointer;color:#345}
"""

_SORT_SCRIPT = """
function sortBy(col, numeric) {
  const body = document.querySelector('#rollouts tbody');
  const rows = Array.from(body.rows);
  const th = document.querySelectorAll('#rollouts th')[col];
  const dir = th.dataset.dir === 'asc' ? -1 : 1;
  document.querySelectorAll('#rollouts th').forEach(h => delete h.dataset.dir);
  th.dataset.dir = dir === 1 ? 'asc' : 'desc';
  rows.sort((a, b) => {
    const x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
    return dir * (numeric ? parseFloat(x) - parseFloat(y) : x.localeCompare(y));
  });
  rows.forEach(r => body.appendChild(r));
}
const wanted = new URLSearchParams(location.hash.slice(1)).get('sort');
if (wanted !== null) { const th = document.querySelector(`#rollouts th[data-key="${wanted}"]`);
  if (th) th.click(); }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _page(title: str, body: str, script: str = "") -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{body}"
            + (f"<script>{script}</script>" if script else "") + "</body></html>")


def _usage_rows(result: Result) -> str:
    rows = [("root", result.usage.root), ("sub", result.usage.sub)]
    rows += [(f"depth {d}", u) for d, u in sorted(result.usage.by_depth.items())]
    rows += [(f"model {m}", u) for m, u in sorted(result.usage.by_model.items())]
    return "".join(f"<tr><td>{_e(name)}</td><td>{u.calls}</td><td>{u.prompt_tokens}</td><td>{u.completion_tokens}</td></tr>"
                   for name, u in rows)


def _sub_call(call: SubCall) -> str:
    flag = f" <span class='warn'>{_e(call.error)}</span>" if call.error else ""
    child = f" · nested run: {_e(call.child.status)}, {len(call.child.turns)} turns" if call.child else ""
    return (f"<details class='subcall'><summary>depth {call.depth} · {call.latency:.2f}s · "
            f"{call.usage.prompt_tokens}+{call.usage.completion_tokens} tok · {call.tool_calls} tool calls{child}{flag}</summary>"
            f"<b>prompt</b><pre>{_e(call.prompt)}</pre><b>completion</b><pre>{_e(call.completion)}</pre></details>")


def _turn(turn: Turn, calls: list[SubCall]) -> str:
    flags = []
    if turn.timed_out:
        flags.append("timed out")
    if turn.restarted:
        flags.append("kernel restarted")
    if turn.chars_cut:
        flags.append(f"output truncated: {turn.chars_cut:,} characters cut")
    if turn.error:
        flags.append(f"error: {turn.error}")
    code = "".join(f"<pre class='code'>{_e(block)}</pre>" for block in turn.code) or "<i>no code</i>"
    subs = "".join(_sub_call(c) for c in calls)
    return (
        f"<section class='turn' id='turn-{turn.index}'><h3>Turn {turn.index}</h3>"
        f"<div>{turn.model_seconds:.2f}s model · {turn.exec_seconds:.2f}s exec · "
        f"{turn.usage.prompt_tokens}+{turn.usage.completion_tokens} tok</div>"
        + "".join(f"<div class='warn'>{_e(f)}</div>" for f in flags)
        + f"<details><summary>assistant message</summary><pre>{_e(turn.assistant)}</pre></details>"
        f"<b>code</b>{code}<b>output</b><pre class='output'>{_e(turn.output)}</pre>"
        + (f"<b>sub-calls ({len(calls)})</b>{subs}" if calls else "")
        + "</section>"
    )


def render_result(result: Result, title: str = "RLM trajectory", reward: float | None = None) -> str:
    """One self-contained page for one run."""
    answers = [f"<tr><td>{turn.index}</td><td><pre>{_e(turn.answer) or '<i>(empty)</i>'}</pre></td></tr>"
               for turn in result.turns if turn.answer is not None]  # None: unchanged by that turn
    by_turn: dict[int, list[SubCall]] = {}
    for call in result.sub_calls:
        by_turn.setdefault(call.turn, []).append(call)
    reward_text = f"<span class='badge'>reward {reward:.3f}</span>" if reward is not None else ""
    t = result.timings
    body = (
        f"<header><h1>{_e(title)}</h1></header><main>"
        f"<section id='summary'><span class='badge {_e(result.status)}'>{_e(result.status)}</span>{reward_text}"
        f"<span class='badge'>{len(result.turns)} turns</span><span class='badge'>{len(result.sub_calls)} sub-calls</span>"
        f"<span class='badge'>{t.total:.1f}s total · {t.model:.1f}s model · {t.execution:.1f}s exec · "
        f"{t.sandbox_start:.1f}s sandbox start</span><span class='badge'>model {_e(result.model)}</span>"
        + (f"<div class='warn'>{_e(result.error)}</div>" if result.error else "")
        + f"<h3>Final answer</h3><pre id='answer'>{_e(result.answer)}</pre>"
        f"<h3>Usage</h3><table><tr><th>role</th><th>calls</th><th>prompt tokens</th><th>completion tokens</th></tr>"
        f"{_usage_rows(result)}</table>"
        f"<h3>How answer[\"content\"] changed</h3><table id='answers'><tr><th>turn</th><th>content</th></tr>{''.join(answers)}</table>"
        f"</section>"
        + "".join(_turn(turn, by_turn.get(turn.index, [])) for turn in result.turns)
        + "</main>"
    )
    return _page(title, body)


_COLUMNS = [("environment", False), ("mode", False), ("task_id", False), ("reward", True), ("status", False),
            ("turns", True), ("root_tokens", True), ("sub_tokens", True), ("seconds", True)]


def render_index(results_dir: Path, pages: dict[str, str]) -> str:
    """The results directory's index: one sortable row per rollout, linking to its page."""
    rows = []
    for line in (results_dir / "results.jsonl").read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        values = {
            "environment": r["environment"], "mode": r["mode"], "task_id": r["task_id"], "reward": r["reward"],
            "status": r["status"], "turns": r["turns"], "seconds": round(r["seconds"], 2),
            "root_tokens": r["root_usage"]["prompt_tokens"] + r["root_usage"]["completion_tokens"],
            "sub_tokens": r["sub_usage"]["prompt_tokens"] + r["sub_usage"]["completion_tokens"],
        }
        link = pages.get(r["trajectory"])
        cells = []
        for key, _ in _COLUMNS:
            text = _e(values[key])
            if key == "task_id" and link:
                text = f"<a href='{_e(link)}'>{text}</a>"
            cells.append(f"<td data-v='{_e(values[key])}'>{text}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    head = "".join(f"<th data-key='{k}' onclick='sortBy({i}, {str(n).lower()})'>{k.replace('_', ' ')}</th>"
                   for i, (k, n) in enumerate(_COLUMNS))
    body = (f"<header><h1>{_e(results_dir.name)}: {len(rows)} rollouts</h1></header><main><section>"
            f"<table id='rollouts'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></section></main>")
    return _page(f"{results_dir.name} rollouts", body, _SORT_SCRIPT)


def write_view(path: Path, out: Path | None = None) -> Path:
    """Write the HTML for a Result JSON file or a results directory; returns the page to open."""
    path = Path(path)
    if path.is_dir():
        if not (path / "results.jsonl").exists():
            raise FileNotFoundError(f"{path} has no results.jsonl")
        out = out or path / "view"
        out.mkdir(parents=True, exist_ok=True)
        rewards = {}
        for line in (path / "results.jsonl").read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            rewards[r["trajectory"]] = r["reward"]
        pages = {}
        for trajectory, reward in rewards.items():
            source = path / trajectory
            if not source.exists():
                continue
            page = out / (trajectory.replace("/", "__").removesuffix(".json") + ".html")
            result = Result.model_validate_json(source.read_text())
            page.write_text(render_result(result, title=trajectory, reward=reward))
            pages[trajectory] = page.name
        index = out / "index.html"
        index.write_text(render_index(path, pages))
        return index
    result = Result.model_validate_json(path.read_text())
    out = out or path.with_suffix(".html")
    out.write_text(render_result(result, title=path.name))
    return out
