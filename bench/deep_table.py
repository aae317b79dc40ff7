"""Markdown tables of the deep experiment's runs (bench/deep_experiment.sh): one JSON per run."""

import json
import sys
from pathlib import Path


def variant(config):
    """What a run changed beyond blocks, mode and seed: the rate schedule, mirror views."""
    notes = []
    if config["train"].get("lr_schedule", "constant") != "constant":
        notes.append(f"{config['train']['lr_schedule']} rate")
    if config.get("mirror_views"):
        notes.append("mirror views")
    return f" ({', '.join(notes)})" if notes else ""


def main():
    runs = [json.loads(p.read_text()) for p in sorted(Path(sys.argv[1]).glob("*.json"))]
    if not runs:
        sys.exit(f"no runs in {sys.argv[1]}")
    runs.sort(key=lambda r: (r["config"]["mode"], r["config"]["train"]["seed"], r["config"]["blocks"]))
    first = runs[0]
    b = first["baseline"]
    print(f"{first['catalogue_items']} catalogue items, {first['query_items']} queries, "
          f"{first['config']['input_size']} px; {first['machine']}\n")
    print("| trained | mode | seed | steps | MAP@R | R@1 | R@5 | R@10 | training (s) | steps/s | peak memory (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| pretrained features | – | – | – | {b['map_at_r']:.4f} | {b['recall_at_1']:.4f} | "
          f"{b['recall_at_5']:.4f} | {b['recall_at_10']:.4f} | – | – | – |")
    for r in runs:
        c = r["config"]
        m = r["checkpoints"][-1]["metrics"] if r["checkpoints"] else None
        what = "head only" if c["blocks"] == 0 else f"last {c['blocks']} block{'s' if c['blocks'] > 1 else ''} + head"
        what += variant(c)
        outcome = "" if r["outcome"] == "completed" else f" ({r['outcome']})"
        figures = (f"{m['map_at_r']:.4f} | {m['recall_at_1']:.4f} | {m['recall_at_5']:.4f} | {m['recall_at_10']:.4f}"
                   if m else "– | – | – | –")
        rate = r["steps"] / r["train_seconds"] if r["train_seconds"] > 0 else 0.0
        print(f"| {what}{outcome} | {c['mode']} | {c['train']['seed']} | {r['steps']} | {figures} | "
              f"{r['train_seconds']:.0f} | {rate:.1f} | {r['peak_rss_mib']:.0f} |")
    print("\nAlong the way (step: MAP@R / R@1 / R@5 at each checkpoint):\n")
    width = max(len(r["checkpoints"]) for r in runs)
    print("| trained | mode | seed | " + " | ".join(f"checkpoint {i + 1}" for i in range(width)) + " |")
    print("|---|---|---|" + "---|" * width)
    for r in runs:
        c = r["config"]
        cells = [f"{k['step']:,}: {k['metrics']['map_at_r']:.3f} / {k['metrics']['recall_at_1']:.3f} / "
                 f"{k['metrics']['recall_at_5']:.3f}" for k in r["checkpoints"]]
        cells += ["–"] * (width - len(cells))
        print(f"| {c['blocks']}{variant(c)} | {c['mode']} | {c['train']['seed']} | " + " | ".join(cells) + " |")

    blended = [r for r in runs if r.get("blended")]
    if blended:
        print("\nBlended with the pretrained features, `[√α·f ; √(1−α)·e]` (MAP@R / R@1 / R@5 / R@10):\n")
        print("| trained | mode | seed | step | α | MAP@R | R@1 | R@5 | R@10 |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in blended:
            c = r["config"]
            for b in r["blended"]:
                m = b["metrics"]
                print(f"| {c['blocks']}{variant(c)} | {c['mode']} | {c['train']['seed']} | {b['step']:,} | {b['share']:.2f} | "
                      f"{m['map_at_r']:.4f} | {m['recall_at_1']:.4f} | {m['recall_at_5']:.4f} | {m['recall_at_10']:.4f} |")


if __name__ == "__main__":
    main()
