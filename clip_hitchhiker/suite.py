"""The standard zero-shot suite (run_msr_retrieval.py --suite): which datasets can run, and one
table of their results with the published figures beside each row, as Markdown (for a paper),
CSV and JSON (for tools). Pure functions from the runs' reports to rows and text; the CLI runs
the datasets and writes the files."""
import csv
import io

from clip_hitchhiker.datasets import registry
from clip_hitchhiker.reporting import classification_metrics

# The table's metric columns: (key in a row's "metrics", heading).
COLUMNS = (("R1", "R@1"), ("R5", "R@5"), ("R10", "R@10"), ("MedR", "MedR"), ("mAP", "mAP"),
           ("top1", "Top-1"), ("top5", "Top-5"), ("mean_class_accuracy", "Mean class"))
TABLE_SUFFIXES = (".md", ".csv", ".json")
INTERVAL_KEYS = ("R1", "R5", "R10", "MedR")  # --bootstrap gives these (retrieval, t2v)


def suite_plan(names, data_root, video_roots):
    """Which of the named datasets have their data on disk.

    video_roots: {name: the folder its videos would be read from, or None}.
    returns: [(name, None when it can run, else what to fetch and where to put it)], in the
    order of names."""
    entries = registry()
    return [(name, entries[name].missing(data_root, video_roots.get(name))
             if entries[name].missing else None) for name in names]


def suite_rows(name, report):
    """The table's rows of one dataset's run: one per aggregation (mean pooling, then each
    query-scoring τ), each with its metrics, its bootstrap interval when there is one, and the
    published figures that report the same split and aggregation.

    report: run_msr_retrieval's report of the run. returns: list of dicts (JSON-able)."""
    entry = registry()[name]
    split = report["config"]["split"] or entry.default_split()
    counts = report["counts"]
    intervals = (report.get("bootstrap") or {}).get("intervals", {})
    rows = []
    for result in report["results"]:
        label = "mean-pooling" if result["temperature"] is None else \
            f"query-scoring, temp: {result['temperature']}"
        row = {"dataset": name, "title": entry.title, "split": split, "task": entry.task,
               "videos": counts["videos"], "queries": counts["queries"],
               "status": "partial" if counts["skipped_videos"] else "complete",
               "aggregation": result["aggregation"], "temperature": result["temperature"],
               "metrics": row_metrics(result), "intervals": None,
               "references": [published(ref) for ref in entry.references
                              if ref.applies_to(split, result["aggregation"],
                                                result["temperature"])]}
        if label in intervals:
            row["intervals"] = {k: intervals[label]["t2v"][k] for k in INTERVAL_KEYS}
        if "t2v" in result:
            row["t2v"], row["v2t"] = result["t2v"], result["v2t"]
        if "error" in result:  # a failed aggregation: the CLI exits 1
            row["error"] = result["error"]
        rows.append(row)
    return rows


def row_metrics(result):
    """The table's metrics of one result: t2v R@1/5/10 and MedR, or the classification
    metrics ({} for a failed aggregation)."""
    if "t2v" in result:
        return {k: result["t2v"][k] for k in ("R1", "R5", "R10", "MedR")}
    return classification_metrics(result)


def published(reference):
    """A Reference as the table's JSON holds it."""
    return {"source": reference.source, "model": reference.model, "frames": reference.frames,
            "aggregation": reference.aggregation, "temperature": reference.temperature,
            "metrics": dict(reference.metrics)}


def reference_text(reference):
    """One published figure as a table cell: "R@1 31.2, R@5 53.7 (source; model, frames)"."""
    headings = dict(COLUMNS)
    figures = ", ".join(f"{headings.get(k, k)} {v:.1f}" for k, v in reference["metrics"].items())
    frames = "" if reference["frames"] == "not stated" else f", {reference['frames']} frames"
    return f"{figures} ({reference['source']}; {reference['model']}{frames})"


def cell(row, key):
    """A metric's cell: the value to one decimal, with its 95 % interval when bootstrapped."""
    value = row["metrics"].get(key)
    if value is None:
        return ""
    interval = (row["intervals"] or {}).get(key)
    return f"{value:.1f}" + ("" if interval is None else f" [{interval[0]:.1f}, {interval[1]:.1f}]")


def markdown_table(rows, not_run, settings):
    """The suite's table in Markdown: the settings, one line per row (only the metric columns
    some row has), then the datasets that did not run and why."""
    used = [(k, h) for k, h in COLUMNS if any(k in row["metrics"] for row in rows)]
    lines = [f"Zero-shot suite: {settings}"]
    if rows:
        lines.append("")
        lines.append("| Dataset | Split | Videos | Queries | Aggregation | "
                     + " | ".join(h for _, h in used) + " | Published |")
        lines.append("|" + " --- |" * (6 + len(used)))
        for row in rows:
            label = row["aggregation"] + ("" if row["temperature"] is None
                                          else f", τ = {row['temperature']:g}")
            title = row["title"] + (" (partial)" if row["status"] == "partial" else "")
            refs = "; ".join(reference_text(r) for r in row["references"]) or "—"
            lines.append(f"| {title} | {row['split']} | {row['videos']:,} | {row['queries']:,} | "
                         f"{label} | " + " | ".join(cell(row, k) for k, _ in used)
                         + f" | {refs} |")
    if not_run:
        lines += ["", "Not run:", ""] + [f"- {item['dataset']}: {item['reason']}"
                                         for item in not_run]
    return "\n".join(lines) + "\n"


def csv_table(rows, not_run):
    """The suite's table as CSV: one line per row, then one per dataset not run (status "not
    run" or "failed", with the reason); every metric and interval column, empty where it does
    not apply."""
    keys = [k for k, _ in COLUMNS]
    fields = (["dataset", "split", "status", "videos", "queries", "aggregation", "temperature"]
              + keys + [f"{k}_{end}" for k in INTERVAL_KEYS for end in ("low", "high")]
              + ["published", "note"])
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        line = {k: row[k] for k in ("dataset", "split", "status", "videos", "queries",
                                    "aggregation", "temperature")}
        line.update(row["metrics"])
        for key, (low, high) in (row["intervals"] or {}).items():
            line[f"{key}_low"], line[f"{key}_high"] = low, high
        line["published"] = "; ".join(reference_text(r) for r in row["references"])
        line["note"] = row.get("error", "")
        writer.writerow(line)
    for item in not_run:
        writer.writerow({"dataset": item["dataset"], "status": item["status"],
                         "note": item["reason"]})
    return out.getvalue()
