"""Prints the index benchmark's JSON lines as one Markdown table, with ratios against hnswlib.

Usage: table.py RESULTS.jsonl...

Each row is one (dataset, engine, ef). "qps ratio" divides by hnswlib's queries/s at the
same ef on the same dataset, "build ratio" by hnswlib's build time; both come from the same
bench/index.sh run. Rows "lookalike" are VectorIndex's native engine, "hnsw_rs" its hnsw_rs
engine. Below the table, per dataset and for each of lookalike's engines, the goals of issue
4: at recall@10 ≥ 0.95 (each engine at its fastest ef that reaches it) queries/s ≥ hnswlib's,
and build time ≤ 1.5 × hnswlib's (the native engine is held to them; hnsw_rs is shown).
"""

import json
import sys

PEER = "hnswlib"
TARGET_RECALL = 0.95
MAX_BUILD_RATIO = 1.5
OURS = ["lookalike", "hnsw_rs"]
ENGINE_ORDER = {"lookalike": 0, "hnsw_rs": 1, "hnswlib": 2, "faiss": 3}


def fastest_at_target(rows):
    good = [r for r in rows if r["recall10"] >= TARGET_RECALL]
    return max(good, key=lambda r: r["qps"]) if good else None


def main():
    rows = [json.loads(line) for path in sys.argv[1:] for line in open(path) if line.strip()]
    peer = {(r["dataset"], r["ef"]): r for r in rows if r["engine"] == PEER}
    rows.sort(key=lambda r: (r["dataset"], ENGINE_ORDER.get(r["engine"], 9), r["ef"]))
    print(
        "| dataset | engine | ef | recall@10 | queries/s | qps ratio | build s | build ratio "
        "| index MB | peak RSS MB |"
    )
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        p = peer.get((r["dataset"], r["ef"]))
        qps_ratio = f"{r['qps'] / p['qps']:.2f}" if p else "–"
        build_ratio = f"{r['build_s'] / p['build_s']:.2f}" if p else "–"
        print(
            f"| {r['dataset']} ({r['n']:,} × {r['dim']}, {r['queries']:,} q) | {r['engine']} | {r['ef']} "
            f"| {r['recall10']:.4f} | {r['qps']:,.0f} | {qps_ratio} | {r['build_s']:.1f} | {build_ratio} "
            f"| {r['index_mb']:,.0f} | {r['peak_rss_mb']:,.0f} |"
        )
    print()
    for dataset in sorted({r["dataset"] for r in rows}):
        theirs = [r for r in rows if r["dataset"] == dataset and r["engine"] == PEER]
        for engine in OURS:
            ours = [r for r in rows if r["dataset"] == dataset and r["engine"] == engine]
            if ours and theirs:
                print(f"- {dataset}, {engine}: {verdicts(engine, ours, theirs)}")


def verdicts(engine, ours, theirs):
    a, b = fastest_at_target(ours), fastest_at_target(theirs)
    if a and b:
        ratio = a["qps"] / b["qps"]
        verdict = "met" if ratio >= 1.0 else "not met"
        speed = (
            f"at recall@10 ≥ {TARGET_RECALL}: {engine} {a['qps']:,.0f} q/s (ef {a['ef']}), "
            f"{PEER} {b['qps']:,.0f} q/s (ef {b['ef']}), ratio {ratio:.2f}: {verdict}"
        )
    else:
        speed = f"recall@10 ≥ {TARGET_RECALL} not reached by {engine if not a else PEER} at any ef"
    build_ratio = ours[0]["build_s"] / theirs[0]["build_s"]
    build = "met" if build_ratio <= MAX_BUILD_RATIO else "not met"
    return f"{speed}; build {build_ratio:.2f} × {PEER} (goal ≤ {MAX_BUILD_RATIO}): {build}"


if __name__ == "__main__":
    main()
