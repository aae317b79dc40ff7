"""Prints bench/embed.sh's table from its JSON lines, and checks the features agree.

Usage: table.py RAW.jsonl LOOKALIKE.f32 PYTORCH.f32. Exits non-zero when lookalike's and
PyTorch's features for the same pixels differ by more than 1e-3 anywhere.
"""

import json
import sys

import numpy as np

TOLERANCE = 1e-3

lines = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
for failed in (r for r in lines if "error" in r):
    print(f"{failed['engine']} {failed['setup']} at batch {failed['batch']} failed: {failed['error']}")
rows = [r for r in lines if "error" not in r]
ours = np.fromfile(sys.argv[2], dtype="<f4")
theirs = np.fromfile(sys.argv[3], dtype="<f4")
if ours.shape != theirs.shape:
    sys.exit(f"feature files differ in length: {ours.shape} vs {theirs.shape}")
diff = float(np.abs(ours - theirs).max())
print(f"\nsame pixels, same weights: max |lookalike - PyTorch| = {diff:.2e} over {ours.size} feature values "
      f"(largest value {float(np.abs(theirs).max()):.2f})")

print("\n| input | batch | lookalike images/s | PyTorch images/s (best set-up) | ratio |")
print("|---|--:|--:|--:|--:|")
for batch in sorted({r["batch"] for r in rows}):
    ours_row = next(r for r in rows if r["engine"] == "lookalike" and r["batch"] == batch)
    peers = [r for r in rows if r["engine"] == "pytorch" and r["batch"] == batch]
    best = max(peers, key=lambda r: r["images_per_s"])
    size = ours_row["size"]
    print(f"| {size}×{size} | {batch} | {ours_row['images_per_s']:.1f} | {best['images_per_s']:.1f} ({best['setup']}) "
          f"| {ours_row['images_per_s'] / best['images_per_s']:.2f} |")

print("\nEvery set-up (median of the rounds; best round in brackets), ms per image:")
print("\n| engine | set-up | batch | median ms/image | best ms/image | rounds |")
print("|---|---|--:|--:|--:|--:|")
for r in rows:
    print(f"| {r['engine']} | {r['setup']} | {r['batch']} | {r['median_ms_per_image']:.2f} | "
          f"{r['best_ms_per_image']:.2f} | {r['rounds']} |")
if diff > TOLERANCE:
    sys.exit(f"features disagree: {diff} > {TOLERANCE}")
