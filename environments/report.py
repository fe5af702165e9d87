"""results/report.md and results/report.html for a finished evaluation: the summary table,
plots (reward ± standard error, tokens per mode, time per rollout) and, for a preset, the
figures its paper or post published beside the run's own. Plots are drawn with matplotlib's Agg
canvas, so no display is needed; the HTML embeds them as base64 PNG and stands alone."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from rlm import MODES

from .presets import Preset, Published
from .results import Row, Summary, format_optional

MODE_COLORS = {"llm": "#E24A33", "rlm": "#348ABD", "rlm+tips": "#988ED5"}
PUBLISHED_MARKERS = ("D", "^", "s", "v")


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    html: Path


@dataclass(frozen=True)
class Plot:
    name: str
    title: str
    png: bytes


def write_report(summary: Summary, out: str | Path, preset: Preset | None = None) -> ReportFiles:
    """Write report.md (plots as PNG files under report_plots/) and report.html (plots inline)."""
    out = Path(out)
    plots = make_plots(summary.rows, preset.published if preset else ())
    plot_dir = out / "report_plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    for plot in plots:
        (plot_dir / f"{plot.name}.png").write_bytes(plot.png)
    files = ReportFiles(markdown=out / "report.md", html=out / "report.html")
    files.markdown.write_text(markdown(summary, plots, preset))
    files.html.write_text(html_page(summary, plots, preset))
    return files


SUMMARY_COLUMNS = ("environment", "mode", "rollouts", "tasks", "reward ± stderr", "task variance", "root tokens",
                   "total tokens", "p50 s", "p95 s", "cost $", "failures")
PUBLISHED_COLUMNS = ("environment", "mode", "published model", "published reward", "this run", "published s",
                     "this run p50 s", "published root tokens", "this run root tokens", "published $", "this run $",
                     "source")


def summary_cells(row: Row) -> list[str]:
    return [row.environment, row.mode, str(row.rollouts), str(row.tasks),
            f"{row.reward_mean:.3f} ± {row.reward_stderr:.3f}", format_optional(row.task_variance, ".3f"),
            f"{row.root_tokens:.0f}", f"{row.total_tokens:.0f}", f"{row.seconds_p50:.1f}", f"{row.seconds_p95:.1f}",
            format_optional(row.cost, ".4f"), str(row.failures)]


def by_environment_and_mode(rows: list[Row]) -> dict[tuple[str, str], Row]:
    return {(r.environment, r.mode): r for r in rows}


def published_cells(figure: Published, rows: dict[tuple[str, str], Row]) -> list[str]:
    """A published figure and, where this run has the same environment × mode, its own numbers."""
    mine = rows.get((figure.environment, figure.mode))
    note = f" ({figure.note})" if figure.note else ""
    return [figure.environment, figure.mode, figure.model, f"{figure.reward:.3f}{note}",
            f"{mine.reward_mean:.3f} ± {mine.reward_stderr:.3f}" if mine else "—",
            format_optional(figure.seconds, ".1f"), format_optional(mine.seconds_p50 if mine else None, ".1f"),
            format_optional(figure.root_tokens, ".0f"), format_optional(mine.root_tokens if mine else None, ".0f"),
            format_optional(figure.cost, ".2f"), format_optional(mine.cost if mine else None, ".4f"), figure.source]


def markdown(summary: Summary, plots: list[Plot], preset: Preset | None) -> str:
    rows = by_environment_and_mode(summary.rows)
    parts = [f"# rlm eval{f' --preset {preset.name}' if preset else ''}", "",
             *([preset.description, ""] if preset else []),
             f"Rollouts: `{summary.results_path}`. Token, second and cost columns are per rollout; task variance is "
             "the mean over tasks of the reward's variance across repeats.", "",
             _markdown_table(SUMMARY_COLUMNS, [summary_cells(r) for r in summary.rows])]
    if preset and preset.published:
        parts += ["", "## Published figures beside this run", "",
                  _markdown_table(PUBLISHED_COLUMNS, [published_cells(f, rows) for f in preset.published])]
    for plot in plots:
        parts += ["", f"## {plot.title}", "", f"![{plot.title}](report_plots/{plot.name}.png)"]
    return "\n".join(parts) + "\n"


def _markdown_table(columns: tuple[str, ...], cells: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    return "\n".join(lines)


def html_page(summary: Summary, plots: list[Plot], preset: Preset | None) -> str:
    rows = by_environment_and_mode(summary.rows)
    title = f"rlm eval{f' --preset {preset.name}' if preset else ''}"
    body = [f"<h1>{html.escape(title)}</h1>"]
    if preset:
        body.append(f"<p>{html.escape(preset.description)}</p>")
    body += [f"<p>Rollouts: <code>{html.escape(summary.results_path)}</code>. Token, second and cost columns are "
             "per rollout; task variance is the mean over tasks of the reward's variance across repeats.</p>",
             _html_table(SUMMARY_COLUMNS, [summary_cells(r) for r in summary.rows])]
    if preset and preset.published:
        body += ["<h2>Published figures beside this run</h2>",
                 _html_table(PUBLISHED_COLUMNS, [published_cells(f, rows) for f in preset.published])]
    for plot in plots:
        encoded = base64.b64encode(plot.png).decode("ascii")
        body += [f"<h2>{html.escape(plot.title)}</h2>",
                 f"<img alt='{html.escape(plot.title)}' src='data:image/png;base64,{encoded}'>"]
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


def _html_table(columns: tuple[str, ...], cells: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells)
    return f"<table><tr>{head}</tr>{body}</table>"


def make_plots(rows: list[Row], published: tuple[Published, ...] = ()) -> list[Plot]:
    return [
        Plot("reward", "Reward ± standard error per environment × mode",
             _draw(rows, lambda ax: _reward(ax, rows, published))),
        Plot("tokens", "Tokens per rollout by mode (root solid, sub-LLM hatched)",
             _draw(rows, lambda ax: _tokens(ax, rows))),
        Plot("time", "Seconds per rollout (bar: p50, whisker: p95)", _draw(rows, lambda ax: _time(ax, rows))),
    ]


def _draw(rows: list[Row], paint: Callable[[Axes], None]) -> bytes:
    environments = sorted({r.environment for r in rows})
    figure = Figure(figsize=(max(6.0, 1.8 * len(environments) + 2), 4), layout="constrained")
    axes = figure.add_subplot()
    paint(axes)
    axes.set_xticks(range(len(environments)), environments)
    axes.grid(axis="y", alpha=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _positions(rows: list[Row]) -> dict[tuple[str, str], float]:
    """x of each environment × mode bar: environments at integers, modes side by side."""
    environments = sorted({r.environment for r in rows})
    modes = [m for m in MODES if any(r.mode == m for r in rows)]
    width = 0.8 / max(1, len(modes))
    return {(env, mode): e + (i - (len(modes) - 1) / 2) * width
            for e, env in enumerate(environments) for i, mode in enumerate(modes)}


def _bar_width(rows: list[Row]) -> float:
    return 0.8 / max(1, len({r.mode for r in rows}))


def _reward(axes: Axes, rows: list[Row], published: tuple[Published, ...]) -> None:
    x = _positions(rows)
    for mode in MODES:
        mine = [r for r in rows if r.mode == mode]
        if mine:
            axes.bar([x[r.environment, mode] for r in mine], [r.reward_mean for r in mine], _bar_width(rows),
                     yerr=[r.reward_stderr for r in mine], capsize=3, color=MODE_COLORS[mode], label=mode)
    models = sorted({f.model for f in published})
    for marker, model in zip(PUBLISHED_MARKERS, models, strict=False):
        shown = [f for f in published if f.model == model and (f.environment, f.mode) in x]
        if shown:
            axes.scatter([x[f.environment, f.mode] for f in shown], [f.reward for f in shown], marker=marker,
                         color="black", zorder=3, label=f"published ({model})")
    axes.set_ylabel("reward")
    axes.set_ylim(0, 1.05)
    axes.legend(fontsize="small")


def _tokens(axes: Axes, rows: list[Row]) -> None:
    x = _positions(rows)
    for mode in MODES:
        mine = [r for r in rows if r.mode == mode]
        if mine:
            xs = [x[r.environment, mode] for r in mine]
            axes.bar(xs, [r.root_tokens for r in mine], _bar_width(rows), color=MODE_COLORS[mode], label=mode)
            axes.bar(xs, [r.sub_tokens for r in mine], _bar_width(rows), bottom=[r.root_tokens for r in mine],
                     color=MODE_COLORS[mode], alpha=0.45, hatch="//")
    axes.set_ylabel("tokens per rollout")
    axes.legend(fontsize="small")


def _time(axes: Axes, rows: list[Row]) -> None:
    x = _positions(rows)
    for mode in MODES:
        mine = [r for r in rows if r.mode == mode]
        if mine:
            axes.bar([x[r.environment, mode] for r in mine], [r.seconds_p50 for r in mine], _bar_width(rows),
                     yerr=[[0.0] * len(mine), [r.seconds_p95 - r.seconds_p50 for r in mine]], capsize=3,
                     color=MODE_COLORS[mode], label=mode)
    axes.set_ylabel("seconds per rollout")
    axes.legend(fontsize="small")
