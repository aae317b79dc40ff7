"""The PyTorch peer of bench/train.sh: the same triplet training step as lookalike, on the same data.

Usage: peer.py DIR

DIR is what `bench/src/bin/train_bench.rs` wrote: manifest.json, the initial weights, the input
rows and the item indices of every batch. This script rebuilds the step in torch from them,
starting from the same weights and walking the same batches, and prints one JSON line: steps/s
over the timed steps (after the same warm-up), the first losses, and for the tail the largest
difference between its embeddings of the first batch and lookalike's (same weights, no step yet).

The step, as lookalike's `train_head` / `train_tail` take it:
  head  rows → Linear(1280, 128) → L2 normalisation
  tail  block inputs N×192×H×W → 1×1 conv 1152 + ReLU6 → 3×3 depthwise (padding 1) + ReLU6
        → 1×1 conv 320 → 1×1 conv 1280 + ReLU6 → mean over H×W → L2 normalisation → head
then Euclidean distances from the Gram matrix (squares floored at 1e-6 before the root),
batch-hard mining on the detached distances (farthest positive, nearest negative; lowest index
on ties), mean of max(0, d_ap − d_an + margin), backward, AdamW (same lr, betas, eps, weight
decay). The batch's item indices are read, not drawn: sampling is not timed here, while
lookalike's time includes its sampler. Run it with torch.set_num_threads(THREADS) (default 2).
"""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import feature_matrix  # noqa: E402  (bench/feature_matrix.py)

MIN_SQUARED_NORM = 1e-12
MIN_SQUARED_DISTANCE = 1e-6
REPORTED_LOSSES = 20
# Key prefix of the trained block's weights (train_bench trains Lite0's last block, 15).
BLOCK = "tail.15"


def read_raw(path, dtype, shape):
    data = np.fromfile(path, dtype=dtype)
    return data.reshape(shape)


def l2_normalised(x):
    return x / x.square().sum(dim=1, keepdim=True).clamp_min(MIN_SQUARED_NORM).sqrt()


class Tail(torch.nn.Module):
    """Lite0's last block and head convolution (batch norm folded into the biases), pooled."""

    def __init__(self, w):
        super().__init__()
        c_in, hidden = w[f"{BLOCK}.expand.weight"].shape
        c_out = w[f"{BLOCK}.project.weight"].shape[1]
        features = w["tail.conv_head.weight"].shape[1]
        kernel = w[f"{BLOCK}.depthwise.weight"].shape[-1]
        self.expand = torch.nn.Conv2d(c_in, hidden, 1)
        self.depthwise = torch.nn.Conv2d(hidden, hidden, kernel, padding=kernel // 2, groups=hidden)
        self.project = torch.nn.Conv2d(hidden, c_out, 1)
        self.head = torch.nn.Conv2d(c_out, features, 1)
        with torch.no_grad():
            # lookalike's 1×1 weights are C_in×C_out; torch's are C_out×C_in×1×1.
            layers = (("expand", f"{BLOCK}.expand"), ("project", f"{BLOCK}.project"), ("head", "tail.conv_head"))
            for name, key in layers:
                conv = getattr(self, name)
                conv.weight.copy_(torch.from_numpy(w[f"{key}.weight"]).t().reshape(conv.weight.shape))
                conv.bias.copy_(torch.from_numpy(w[f"{key}.bias"]))
            self.depthwise.weight.copy_(torch.from_numpy(w[f"{BLOCK}.depthwise.weight"]))
            self.depthwise.bias.copy_(torch.from_numpy(w[f"{BLOCK}.depthwise.bias"]))

    def forward(self, x):
        y = torch.nn.functional.relu6(self.expand(x))
        y = torch.nn.functional.relu6(self.depthwise(y))
        y = torch.nn.functional.relu6(self.head(self.project(y)))
        return l2_normalised(y.mean(dim=(2, 3)))


def pairwise_distances(e):
    squared_norms = e.square().sum(dim=1, keepdim=True)
    squared = squared_norms + squared_norms.t() - 2.0 * (e @ e.t())
    return squared.clamp_min(MIN_SQUARED_DISTANCE).sqrt()


def batch_hard_loss(distances, labels, margin):
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool)
    with torch.no_grad():
        plain = distances.detach()
        inf = torch.tensor(float("inf"))
        positive = torch.where(same & ~eye, plain, -inf).argmax(dim=1, keepdim=True)
        negative = torch.where(~same, plain, inf).argmin(dim=1, keepdim=True)
    gap = distances.gather(1, positive) - distances.gather(1, negative)
    return torch.relu(gap + margin).mean()


def main():
    out = Path(sys.argv[1])
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    m = json.loads((out / "manifest.json").read_text())
    labels = torch.from_numpy(np.fromfile(out / m["labels"], dtype="<u4").astype(np.int64))
    batches = torch.from_numpy(read_raw(out / m["batches"]["file"], "<u4", m["batches"]["shape"]).astype(np.int64))
    weights = {w["name"]: read_raw(out / w["file"], "<f4", w["shape"]).copy() for w in m["weights"]}
    inputs = torch.from_numpy(feature_matrix.read(m["inputs"]["file"]))
    head = torch.nn.Linear(*weights["head.weight"].shape[::-1])
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weights["head.weight"]))
        head.bias.copy_(torch.from_numpy(weights["head.bias"]))
    result = {"part": m["part"], "engine": "pytorch", "items": m["items"], "torch": torch.__version__}
    if m["part"] == "head":
        embed = lambda x: l2_normalised(head(x))  # noqa: E731
        params = list(head.parameters())
    else:
        n, h, w, c = m["inputs"]["shape"]
        inputs = inputs.reshape(n, h, w, c).permute(0, 3, 1, 2)
        channels_last = os.environ.get("CHANNELS_LAST", "0") == "1"
        inputs = inputs.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        model = Tail(weights)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        embed = lambda x: l2_normalised(head(model(x)))  # noqa: E731
        params = list(model.parameters()) + list(head.parameters())
        with torch.no_grad():
            ours = embed(inputs[batches[0]]).numpy()
        theirs = read_raw(out / m["forward"]["file"], "<f4", m["forward"]["shape"])
        result["forward_max_abs_diff"] = float(np.abs(ours - theirs).max())
        result["channels_last"] = channels_last
    optimizer = torch.optim.AdamW(
        params, lr=m["learning_rate"], betas=tuple(m["adam_betas"]), eps=m["adam_eps"], weight_decay=m["weight_decay"]
    )
    margin = m["margin"]
    losses, ends = [], []
    for items in batches:
        x = inputs[items]
        loss = batch_hard_loss(pairwise_distances(embed(x)), labels[items], margin)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        ends.append(time.perf_counter())
    warmup, steps = m["warmup"], m["steps"]
    seconds = ends[warmup + steps - 1] - ends[warmup - 1]
    result.update(
        steps=steps,
        seconds=seconds,
        steps_per_s=steps / seconds,
        losses=losses[:REPORTED_LOSSES],
        threads=torch.get_num_threads(),
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
