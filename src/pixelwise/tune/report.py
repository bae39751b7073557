"""The tune report: PARENT/trials.csv, PARENT/report.html (best trials or the Pareto front, the Pareto plot, the
parameter importances, how to watch the study live) and the same pictures in PARENT/plots/."""

from __future__ import annotations

import csv
import html
import io
import warnings
from pathlib import Path
from typing import Any

from rich.table import Table

from pixelwise.atomic import atomic_write_bytes, atomic_write_text
from pixelwise.report.html import data_uri
from pixelwise.report.plots import figure_png, plain_text, pyplot
from pixelwise.tune.study import REMEASURED, shown_url

COLUMNS = ["number", "state", "miou", "latency_ms", "trial_latency_ms", "base", "run", "params"]


def pareto_front(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Complete trials no other complete trial beats on both mIoU (higher) and latency (lower), by latency."""
    done = [r for r in rows if r["state"] == "complete" and r["miou"] is not None and r["latency_ms"] is not None]
    front = [r for r in done if not any(o["miou"] >= r["miou"] and o["latency_ms"] <= r["latency_ms"]
                                        and (o["miou"], o["latency_ms"]) != (r["miou"], r["latency_ms"])
                                        for o in done)]
    return sorted(front, key=lambda r: r["latency_ms"])


def best_rows(rows: list[dict[str, Any]], objectives: list[str], n: int = 5) -> list[dict[str, Any]]:
    if "latency" in objectives:
        return pareto_front(rows)
    done = [r for r in rows if r["state"] == "complete" and r["miou"] is not None]
    return sorted(done, key=lambda r: -r["miou"])[:n]


@plain_text
def plot_pareto(rows: list[dict[str, Any]], size: list[int], backend: str) -> bytes:
    plt = pyplot()
    done = [r for r in rows if r["state"] == "complete" and r["latency_ms"] is not None]
    front = pareto_front(rows)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.scatter([r["latency_ms"] for r in done], [r["miou"] for r in done], c="#9aa5b1", label="trials")
    ax.plot([r["latency_ms"] for r in front], [r["miou"] for r in front], "o-", c="#c0392b", label="Pareto front")
    for r in front:
        ax.annotate(str(r["number"]), (r["latency_ms"], r["miou"]), textcoords="offset points", xytext=(4, 4))
    base = [r for r in done if r["base"]]
    if base:
        ax.scatter([base[0]["latency_ms"]], [base[0]["miou"]], marker="*", s=160, c="#2c7be5", label="plan (--auto)")
    ax.set_xlabel(f"ms per {size[0]}x{size[1]} image ({backend}, this machine)")
    ax.set_ylabel("val mIoU")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return figure_png(fig)


@plain_text
def plot_importances(importances: dict[str, float]) -> bytes:
    plt = pyplot()
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(6.4, 0.5 * len(names) + 1.2))
    ax.barh(names, [importances[n] for n in names], color="#2c7be5")
    ax.set_xlabel("importance for a high val mIoU (PED-ANOVA)")
    fig.tight_layout()
    return figure_png(fig)


def importances(study: Any) -> dict[str, float] | None:
    """Parameter importances for val mIoU, or None while too few complete trials vary their parameters."""
    import optuna

    try:
        # PED-ANOVA (Optuna's own; fANOVA needs scikit-learn) ranks what leads to low values: mIoU is negated
        evaluator = optuna.importance.PedAnovaImportanceEvaluator()
        with warnings.catch_warnings():  # it warns that it ranks for low values, whatever the target
            warnings.simplefilter("ignore", UserWarning)
            return optuna.importance.get_param_importances(study, evaluator=evaluator, target=lambda t: -t.values[0])
    except (ValueError, RuntimeError, ZeroDivisionError, ImportError):
        return None


def console_table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for column in ("trial", "val mIoU", "ms", "parameters", "run"):
        table.add_column(column)
    for r in rows:
        table.add_row(str(r["number"]) + (" (plan)" if r["base"] else ""), f"{r['miou']:.4f}",
                      "-" if r["latency_ms"] is None else f"{r['latency_ms']:.1f}", r["params"], str(r["run"]))
    return table


def _num(x: float | None, digits: int) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def _html_table(rows: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{c}</th>" for c in ("trial", "state", "val mIoU", "ms", "parameters", "run"))
    body = "".join(
        f"<tr><td>{r['number']}{' (plan)' if r['base'] else ''}</td><td>{r['state']}</td>"
        f"<td>{_num(r['miou'], 4)}</td><td>{_num(r['latency_ms'], 1)}</td>"
        f"<td><code>{html.escape(r['params'])}</code></td><td>{html.escape(str(r['run']))}</td></tr>"
        for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _remeasured(study: Any) -> str:
    again = study.user_attrs.get(REMEASURED)
    if not again:
        return ""
    return (f" Latencies measured again one after another on {html.escape(str(again.get('machine')))} "
            f"({html.escape(str(again.get('when')))}, <code>--remeasure</code>): {len(again.get('ms', {}))} trial(s); "
            "trials.csv keeps the ones measured as the trials ran (trial_latency_ms).")


def write_report(study: Any, parent: Path, url: str, info: dict[str, Any], rows: list[dict[str, Any]]) -> Path:
    """trials.csv, report.html and plots/ in ``parent`` from the study's ``rows`` (``study_rows``); returns the
    report's path."""
    settings = info["settings"]
    objectives = settings["objectives"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(parent / "trials.csv", buf.getvalue())
    best = best_rows(rows, objectives)
    counts = {s: sum(r["state"] == s for r in rows) for s in ("complete", "pruned", "fail", "running", "waiting")}
    figures = []
    if "latency" in objectives and best:
        png = plot_pareto(rows, settings["latency_size"], settings["latency_backend"])
        figures.append(("Pareto front: val mIoU against latency", "pareto.png", png))
    found = importances(study) if counts["complete"] >= 2 else None
    if found:
        figures.append(("Parameter importances", "importances.png", plot_importances(found)))
    for _, name, png in figures:
        (parent / "plots").mkdir(exist_ok=True)
        atomic_write_bytes(parent / "plots" / name, png)
    title = "Pareto front (val mIoU against latency)" if "latency" in objectives else "Best trials"
    shown = html.escape(shown_url(url))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>pixelwise tune: {html.escape(study.study_name)}
</title><style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}code{{font-size:85%}}</style></head><body>
<h1>Study {html.escape(study.study_name)}</h1>
<p>Storage <code>{shown}</code>; objectives: {", ".join(objectives)}; trials: {", ".join(f"{v} {k}" for k, v in
counts.items() if v)}. Search space {info["space_hash"]} ({html.escape(str(info["space_source"]))}).
Trial 0 is the plan's configuration (<code>--auto</code>) on the same budget.{_remeasured(study)}</p>
<p>Watch it live: <code>pip install optuna-dashboard; optuna-dashboard {shown}</code></p>
<h2>{title}</h2>{_html_table(best)}
{"".join(f'<h2>{t}</h2><img src="{data_uri(png)}" alt="{t}">' for t, _, png in figures)}
<h2>All trials</h2>{_html_table(rows)}</body></html>
"""
    atomic_write_text(parent / "report.html", page)
    return parent / "report.html"
