r"""One guide against the best of the others, model by model, from posterior-accuracy results.

Reads results files of ``posterior_accuracy.py`` (their runs, or for a file that kept only its
tables, the tables' medians; a later file's guide replaces an earlier file's same guide at the
same model and learning rate) and writes one table per
learning rate, and one of each guide at its better rate (per metric, the lower median over the
rates): for every model, the best baseline's median mean error and median log-sd error
over seeds (each metric's best taken separately, the guide named), and the chosen guide's, with
its count of non-finite runs. Baselines are the guides that are not from this library (NumPyro's
autoguides and SteinVI). A model or rate without the chosen guide's runs is left out.

Usage::

    python benchmarks/compare_guides.py --guide semi-implicit \
        results/posterior_accuracy.json results/posterior_accuracy_more_models.json ... \
        --json results/guide_comparison.json
"""

from __future__ import annotations

import argparse

from common import read_json, seed_summary, table, write_json
from models import LABELS

BASELINES = ("normal", "mvn", "iaf", "bnaf", "dais", "steinvi")
METRICS = ("mean_err", "sd_err")


def from_tables(tables) -> dict:
    """Summaries read back from rendered tables (results files that kept only their tables)."""
    names = {label: name for name, label in LABELS.items()}
    out: dict = {}
    for key, tbl in tables.items():
        model, lr = key.rsplit("_lr", 1)
        for label, mean, sd, _ksd, bad in tbl["rows"]:
            if label in names:
                out.setdefault((model, float(lr)), {})[names[label]] = {
                    "mean_err": None if mean == "—" else float(mean),
                    "sd_err": None if sd == "—" else float(sd), "non_finite": bad}
    return out


def collect(paths) -> dict:
    """``{(model, lr): {guide: summary}}``, later files replacing earlier ones per guide."""
    runs: dict = {}
    for path in paths:
        results = read_json(path)["results"]
        if "blocks" in results:
            found = {(b["model"], b["lr"]): {g: seed_summary(r, METRICS)
                                                 for g, r in b["guides"].items()}
                     for b in results["blocks"]}
        else:
            found = from_tables(results["tables"])
        for key, guides in found.items():
            runs.setdefault(key, {}).update(guides)
    return runs


def row_of(model, guides, guide, also=None) -> list:
    """``model``, then per metric the best baseline (named), ``also`` (if given) and ``guide``,
    then its non-finite count."""
    row = [model]
    for metric in METRICS:
        scored = [(g[metric], name) for name, g in guides.items()
                  if name in BASELINES and g[metric] is not None]
        best = min(scored) if scored else None
        row.append("—" if best is None else f"{best[0]:.3f} ({LABELS[best[1]]})")
        for name in ([also] if also else []) + [guide]:
            value = guides.get(name, {}).get(metric)
            row.append("—" if value is None else f"{value:.3f}")
    return row + [guides[guide]["non_finite"]]


def compare(runs: dict, guide: str, also: str | None = None) -> dict:
    """Tables by learning rate, ``lr<lr>``."""
    rows_by_lr: dict = {}
    for (model, lr), guides in sorted(runs.items(), key=lambda kv: (-kv[0][1], kv[0][0])):
        if guide not in guides:
            continue
        rows_by_lr.setdefault(lr, []).append(row_of(model, guides, guide, also))
    # Each guide at its better rate: per model and metric, the lowest median over the rates.
    models = {model for (model, _), guides in runs.items() if guide in guides}
    by_model: dict = {}
    for (model, _), guides in runs.items():
        for name, g in guides.items():
            if model in models:
                by_model.setdefault(model, {}).setdefault(name, []).append(g)
    best_rate = []
    for model, guides in sorted(by_model.items()):
        merged = {name: {m: min((g[m] for g in gs if g[m] is not None), default=None)
                         for m in METRICS} for name, gs in guides.items()}
        merged[guide]["non_finite"] = "—"
        best_rate.append(row_of(model, merged, guide, also)[:-1])
    header = ["model"]
    for metric in ("mean err", "log-sd err"):
        header += [f"best baseline {metric}"] + [f"{LABELS[g]} {metric}" for g in ([also] if also else []) + [guide]]
    align = "l" + "r" * (len(header) - 1)
    tables = {f"lr{lr:g}": table(header + ["non-finite runs"], rows, align + "r")
              for lr, rows in rows_by_lr.items()}
    tables["best_rate"] = table(header, best_rate, align)
    return tables


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", help="posterior_accuracy results files, in order")
    p.add_argument("--guide", default="semi-implicit", choices=sorted(LABELS))
    p.add_argument("--also", default=None, choices=sorted(LABELS),
                   help="a further guide whose medians are shown beside the chosen one's")
    p.add_argument("--models", nargs="+", default=None, help="only these models (default: all)")
    p.add_argument("--json", default=None, help="output (default results/guide_comparison.json)")
    cfg = p.parse_args(argv)
    runs = {k: v for k, v in collect(cfg.files).items() if cfg.models is None or k[0] in cfg.models}
    out = {"guide": cfg.guide, "files": cfg.files, "tables": compare(runs, cfg.guide, cfg.also)}
    print(f"wrote {write_json('guide_comparison', out, cfg.json)}")
    return out


if __name__ == "__main__":
    main()
