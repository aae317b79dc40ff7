"""Prints bench/train.sh's JSON lines as one Markdown table: steps/s of lookalike and PyTorch.

Usage: table.py RESULTS.jsonl

One row per part (head-only; last block + head), from the lookalike and pytorch lines of the
same run: steps/s of each, their ratio (lookalike / PyTorch; the goal of issue 4 is ≥ 1.0),
the largest difference between the two sides' losses over the first steps they both report
(same initial weights, same batches), and for the tail the largest difference between the two
forward passes before any step.
"""

import json
import sys

ROWS = {"head": "head-only (cached features)", "tail": "last block + head"}
GOAL = 1.0


def main():
    lines = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    by = {(r["part"], r["engine"]): r for r in lines}
    print("| training step | items | lookalike steps/s | PyTorch steps/s | ratio | loss max abs diff (steps) | forward max abs diff |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    verdicts = []
    for part, title in ROWS.items():
        ours, theirs = by.get((part, "lookalike")), by.get((part, "pytorch"))
        if not ours or not theirs:
            continue
        ratio = ours["steps_per_s"] / theirs["steps_per_s"]
        pairs = list(zip(ours["losses"], theirs["losses"]))
        loss_diff = max(abs(a - b) for a, b in pairs)
        forward = theirs.get("forward_max_abs_diff")
        forward = f"{forward:.1e}" if forward is not None else "–"
        print(
            f"| {title} | {ours['items']:,} | {ours['steps_per_s']:,.1f} | {theirs['steps_per_s']:,.1f} "
            f"| {ratio:.2f} | {loss_diff:.1e} ({len(pairs)}) | {forward} |"
        )
        verdicts.append(f"{title}: ratio {ratio:.2f} ({'met' if ratio >= GOAL else 'not met'}, goal ≥ {GOAL})")
    print()
    for line in verdicts:
        print(f"- {line}")
    first = by.get(("head", "lookalike")), by.get(("head", "pytorch"))
    if all(first):
        print("- head-only, first losses: lookalike " + ", ".join(f"{x:.6f}" for x in first[0]["losses"][:5]))
        print("  PyTorch " + ", ".join(f"{x:.6f}" for x in first[1]["losses"][:5]))


if __name__ == "__main__":
    main()
