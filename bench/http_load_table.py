"""Tables of bench/http_load.sh from its raw folder (hey CSVs, /metrics snapshots).

    python3 bench/http_load_table.py bench/out/http_load
"""

import csv
import glob
import os
import re
import sys

STAGES = ["read", "decode", "queue", "gathering", "forward", "index", "total"]


def metrics(path):
    """Prometheus text -> {name or name{labels}: value}."""
    out = {}
    for line in open(path):
        if line.startswith("#") or not line.strip():
            continue
        key, value = line.rsplit(" ", 1)
        out[key] = float(value)
    return out


def delta(before, after, key):
    return after.get(key, 0.0) - before.get(key, 0.0)


def percentile(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * len(values) + 0.5) - 1))]


def ms(value):
    return "–" if value != value else f"{value:.1f}"


def main(raw):
    rows = {}
    for line in open(os.path.join(raw, "rows.tsv")):
        name, clients, max_batch, capacity, start, end = line.split("\t")
        answers = []
        for path in glob.glob(os.path.join(raw, f"{name}.[0-9]*.csv")):
            for rec in csv.reader(open(path)):
                if len(rec) >= 7 and rec[6].strip():
                    answers.append((int(rec[6]), float(rec[0]) * 1000))
        before = metrics(os.path.join(raw, f"{name}.before.prom"))
        after = metrics(os.path.join(raw, f"{name}.after.prom"))
        searches = delta(before, after, "lookalike_search_duration_seconds_count")
        stage = {
            s: delta(before, after, f'lookalike_search_stage_seconds_total{{stage="{s}"}}')
            * 1000
            / max(searches, 1)
            for s in STAGES
        }
        batches = delta(before, after, "lookalike_embedder_batches_total")
        images = delta(before, after, "lookalike_embedder_images_total")
        rows[name] = dict(
            clients=int(clients),
            max_batch=max_batch,
            capacity=capacity,
            wall=float(end) - float(start),
            answers=answers,
            ok=[t for s, t in answers if s == 200],
            busy=[t for s, t in answers if s == 503],
            other=[s for s, _ in answers if s not in (200, 503)],
            stage=stage,
            searches=searches,
            per_batch=images / batches if batches else float("nan"),
        )

    print("| row | clients | max_batch | queue cap | requests | 200 | 503 | other | 200/s | p50 ms | p99 ms | mean ms | images/batch |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for name, r in rows.items():
        ok = r["ok"]
        mean = sum(ok) / len(ok) if ok else float("nan")
        print(
            f"| {name} | {r['clients']} | {r['max_batch']} | {r['capacity']} | {len(r['answers'])} | {len(ok)} "
            f"| {len(r['busy'])} | {len(r['other'])} | {len(ok) / r['wall']:.1f} | {ms(percentile(ok, 50))} "
            f"| {ms(percentile(ok, 99))} | {ms(mean)} | {r['per_batch']:.1f} |"
        )

    print()
    print("Server-side mean ms per answered search (from /metrics); queue includes gathering (waiting for a batch to fill);")
    print("other = handler total minus the stages; outside model = 1 - forward / client mean.")
    print()
    print("| row | read | decode | queue | (gathering) | forward | index | other | handler total | client mean | outside model |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for name, r in rows.items():
        s = r["stage"]
        other = s["total"] - s["read"] - s["decode"] - s["queue"] - s["forward"] - s["index"]
        mean = sum(r["ok"]) / len(r["ok"]) if r["ok"] else float("nan")
        outside = 1 - s["forward"] / mean if mean == mean and mean > 0 else float("nan")
        print(
            f"| {name} | {s['read']:.2f} | {s['decode']:.2f} | {s['queue']:.2f} | {s['gathering']:.2f} "
            f"| {s['forward']:.2f} | {s['index']:.2f} | {other:.2f} | {s['total']:.2f} | {ms(mean)} | {outside:.1%} |"
        )

    print()
    if "c1" in rows:
        r = rows["c1"]
        mean = sum(r["ok"]) / len(r["ok"]) if r["ok"] else float("nan")
        outside = 1 - r["stage"]["forward"] / mean if mean == mean and mean > 0 else float("nan")
        verdict = "met" if outside <= 0.10 else "not met"
        print(
            f"- 1 client: time outside the model {outside:.1%} of the client-seen mean "
            f"({ms(mean)} ms, forward {r['stage']['forward']:.2f} ms); goal <= 10%: {verdict}"
        )
    if "c32" in rows and "c32-nobatch" in rows:
        on, off = (len(rows[n]["ok"]) / rows[n]["wall"] for n in ("c32", "c32-nobatch"))
        ratio = on / off if off else float("nan")
        verdict = "met" if ratio >= 2 else "not met"
        print(
            f"- 32 clients: batching on {on:.1f}/s, off {off:.1f}/s, ratio {ratio:.2f}; goal >= 2: {verdict}"
        )
    if "overload" in rows:
        r = rows["overload"]
        print(
            f"- overload ({r['clients']} clients, queue capacity {r['capacity']}): {len(r['busy'])} answered 503 "
            f"(p50 {ms(percentile(r['busy'], 50))} / p99 {ms(percentile(r['busy'], 99))} ms), {len(r['ok'])} answered 200 "
            f"(p50 {ms(percentile(r['ok'], 50))} / p99 {ms(percentile(r['ok'], 99))} ms), {len(r['other'])} other"
        )
    if "after" in rows:
        r = rows["after"]
        print(f"- after the overload, 1 client: {len(r['ok'])} of {len(r['answers'])} answered 200")


if __name__ == "__main__":
    main(sys.argv[1])
