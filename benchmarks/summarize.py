"""Markdown summary of the detection-quality CSV written by ``benchmarks/quality.py``.

    python benchmarks/summarize.py [benchmarks/results/quality.csv ...] [--detectors a,b]
                                   [--exclude c,d] [--datasets x,y] [--seeds 0]

Table (BENCHMARK.md, section 1): rows = datasets, columns = detectors, cell = mean AUROC over the
seeds (``fail`` when any seed of that detector failed on that dataset, ``—`` when not run). Bottom
rows = mean AUROC, mean AUPRC, mean rank (per dataset, by mean AUROC, 1 = best, ties share the
average rank), datasets won (ties count for every tied detector), worst deficit (the largest
gap, over datasets, between the best peer's mean AUROC and the detector's, with that dataset;
peers are the detectors not named ``anomaly-*``), median realised FPR at the 1 %
target (over datasets, each its mean over seeds) — the protocol's 99th-percentile threshold,
then the project's conformal calibrator on the same scores — and failures (failed dataset × seed
runs, over all datasets). Per dataset, only the seeds that every shown detector has run are used.
The aggregate rows use only the datasets on which every shown detector succeeded on every seed
run for that dataset; the others are listed under the table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent


def _short(detector: str) -> str:
    return detector.removeprefix("anomaly-")


def common_seeds(df: pd.DataFrame) -> pd.DataFrame:
    """Per dataset, only the seeds that every detector has a row for (ok or failed)."""
    n_detectors = df["detector"].nunique()
    per_seed = df.groupby(["dataset", "seed"])["detector"].nunique()
    full = per_seed[per_seed == n_detectors].index
    keep = pd.MultiIndex.from_frame(df[["dataset", "seed"]]).isin(full)
    return df[keep]


def summarize(df: pd.DataFrame) -> str:
    detectors = list(dict.fromkeys(df["detector"]))
    datasets = list(dict.fromkeys(df["dataset"]))
    ok = df[df["status"] == "ok"]
    auroc = ok.pivot_table(index="dataset", columns="detector", values="auroc", aggfunc="mean")
    auprc = ok.pivot_table(index="dataset", columns="detector", values="auprc", aggfunc="mean")
    auroc = auroc.reindex(index=datasets, columns=detectors)
    auprc = auprc.reindex(index=datasets, columns=detectors)

    # a dataset is complete when every detector has an ok row for every seed run on it
    seeds_per_dataset = df.groupby("dataset")["seed"].nunique()
    ok_counts = ok.groupby(["dataset", "detector"])["seed"].nunique().unstack()
    ok_counts = ok_counts.reindex(index=datasets, columns=detectors).fillna(0)
    failed = df[df["status"] != "ok"]
    failed_cells = set(zip(failed["dataset"], failed["detector"], strict=True))
    complete = [
        d for d in datasets if (ok_counts.loc[d] == seeds_per_dataset[d]).all() and d in auroc.index
    ]
    left_out = [d for d in datasets if d not in complete]

    header = "| dataset | " + " | ".join(_short(d) for d in detectors) + " |"
    lines = [header, "|---|" + "---:|" * len(detectors)]
    for ds in datasets:
        cells = []
        for det in detectors:
            if (ds, det) in failed_cells:
                cells.append("fail")
            elif pd.isna(auroc.loc[ds, det]):
                cells.append("—")
            else:
                value = f"{auroc.loc[ds, det]:.3f}"
                best = auroc.loc[ds].max()
                cells.append(f"**{value}**" if auroc.loc[ds, det] == best else value)
        n_seeds = seeds_per_dataset[ds]
        lines.append(f"| {ds} (n={n_seeds}) | " + " | ".join(cells) + " |")

    def row(label: str, values: pd.Series, fmt: str) -> str:
        return f"| **{label}** | " + " | ".join(format(values[d], fmt) for d in detectors) + " |"

    sub_roc, sub_prc = auroc.loc[complete], auprc.loc[complete]
    if complete:
        ranks = sub_roc.rank(axis=1, ascending=False, method="average")
        won = sub_roc.eq(sub_roc.max(axis=1), axis=0).sum()
        in_complete = ok[ok["dataset"].isin(complete)]
        # each dataset counts once, as in the other rows: its mean over seeds, then the median
        per_dataset = in_complete.groupby(["detector", "dataset"])
        fpr = per_dataset["threshold_fpr"].mean().groupby("detector").median().reindex(detectors)
        conformal = (
            per_dataset["calibrated_fpr"].mean().groupby("detector").median().reindex(detectors)
        )
        peers = [d for d in detectors if not d.startswith("anomaly-")]
        deficit_row = []
        if peers:
            gap = sub_roc[peers].max(axis=1).to_numpy()[:, None] - sub_roc
            worst = gap.max()
            where = gap.idxmax()
            deficit_row = [
                "| **worst deficit vs best peer** | "
                + " | ".join(f"{worst[d]:.3f} ({where[d]})" for d in detectors)
                + " |"
            ]
        lines += [
            row("mean AUROC", sub_roc.mean(), ".3f"),
            row("mean AUPRC", sub_prc.mean(), ".3f"),
            row("mean rank", ranks.mean(), ".2f"),
            row("datasets won", won, "d"),
            *deficit_row,
            row("median FPR @1 %", fpr, ".3f"),
            row("median FPR @1 %, conformal", conformal, ".3f"),
        ]
    n_failed = failed.groupby("detector").size().reindex(detectors).fillna(0).astype(int)
    lines.append(row("failures", n_failed, "d"))

    notes = [
        "",
        f"Aggregate rows over {len(complete)} dataset(s) where every detector has results: "
        + (", ".join(complete) or "none")
        + ".",
    ]
    if left_out:
        notes.append("Left out of the aggregate rows (a detector failed or was not run): ")
        for ds in left_out:
            missing = [_short(d) for d in detectors if ok_counts.loc[ds, d] < seeds_per_dataset[ds]]
            notes[-1] += f"{ds} ({', '.join(missing)}); "
        notes[-1] = notes[-1].rstrip("; ") + "."
    if not failed.empty:
        notes.append("")
        notes.append("Failures:")
        for _, r in failed.iterrows():
            notes.append(f"- {r['dataset']} seed {r['seed']} {r['detector']}: {r['error']}")
    return "\n".join(lines + notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "csv", nargs="*", default=[str(REPO / "benchmarks" / "results" / "quality.csv")]
    )
    parser.add_argument("--detectors", default="", help="comma list of detectors to show")
    parser.add_argument("--exclude", default="", help="comma list of detectors to leave out")
    parser.add_argument("--datasets", default="", help="comma list of name substrings")
    parser.add_argument("--seeds", default="", help="comma list of seeds to keep (default all)")
    args = parser.parse_args()
    frames = []
    for path in args.csv:
        if not Path(path).is_file():
            sys.exit(f"no results file {path}: run benchmarks/quality.py first")
        frames.append(pd.read_csv(path, keep_default_na=False, na_values=[""]))
    df = pd.concat(frames, ignore_index=True)
    df = df.drop_duplicates(subset=["dataset", "seed", "detector"], keep="last")
    if args.detectors:
        wanted = [s.strip() for s in args.detectors.split(",") if s.strip()]
        df = df[df["detector"].isin(wanted)]
    if args.exclude:
        unwanted = [s.strip() for s in args.exclude.split(",") if s.strip()]
        df = df[~df["detector"].isin(unwanted)]
    if args.datasets:
        subs = [s.strip().lower() for s in args.datasets.split(",") if s.strip()]
        df = df[df["dataset"].str.lower().apply(lambda n: any(s in n for s in subs))]
    if args.seeds:
        df = df[df["seed"].isin([int(x) for x in args.seeds.split(",") if x.strip()])]
    df = common_seeds(df)
    if df.empty:
        sys.exit("no rows to summarise")
    print(summarize(df))


if __name__ == "__main__":
    main()
