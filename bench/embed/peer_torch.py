"""PyTorch peer for bench/embed.sh and scripts/gpu-check.sh: EfficientNet-Lite0 pooled
features, timed, on the CPU or a CUDA GPU.

Builds Lite0 in plain torch from the weights file the service loads (the safetensors
lookalike imports, read here with numpy: no safetensors package needed; a legacy .pth
state dict is read with torch.load), with the B0 stage layout, no squeeze-and-excitation,
ReLU6, TensorFlow "same" padding and batch-norm eps 1e-3, folds batch norm into the
convolutions, and times the forward pass at the given input size and batch sizes under
`torch.inference_mode()`.

On CUDA (--device cuda or cuda:N): TF32 is off for matrix products and cuDNN
convolutions, so the arithmetic is full f32 as candle's (which keeps TF32 off by
default) and features compare to 1e-3; cuDNN may pick its fastest algorithms
(cudnn.benchmark); the input is on the GPU before the clock starts and every timed
round ends with torch.cuda.synchronize().

Set-ups timed, each reported (the table takes the fastest, PyTorch at its best):
  eager            NCHW, folded batch norm
  channels_last    the same with channels_last memory format
  jit_frozen       channels_last, torch.jit.trace + torch.jit.freeze +
                   optimize_for_inference (oneDNN fusions)

It also embeds the fixed input in --check-input (raw little-endian f32, N×3×S×S)
and writes the features to --check-output, so the script can compare them with
lookalike's on the same pixels; the timed batches are then those images repeated
(random pixels without it), as embed_bench does.

Prints one JSON line per (set-up, batch); a set-up that fails on this device prints
its error instead of timings, and the others still run.
"""

import argparse
import json
import math
import struct
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

BN_EPS = 1e-3
# (expand, kernel, stride, repeats, out_channels) of EfficientNet-B0, which Lite0 shares.
STAGES = [(1, 3, 1, 1, 16), (6, 3, 2, 2, 24), (6, 5, 2, 2, 40), (6, 3, 2, 3, 80),
          (6, 5, 1, 3, 112), (6, 5, 2, 4, 192), (6, 3, 1, 1, 320)]


def same_padding(size, kernel, stride):
    """TensorFlow "same": output ceil(size/stride), an odd total goes to the end."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


# safetensors dtype names → numpy dtypes (little-endian).
SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4",
                      "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}


def read_safetensors(path):
    """{name: CPU tensor} from a safetensors file: an 8-byte header length, a JSON header of
    dtype, shape and byte range per tensor, then the raw data."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
        data = f.read()
    tensors = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if meta["dtype"] not in SAFETENSORS_DTYPES:
            sys.exit(f"{path}: {name} has dtype {meta['dtype']}, which this reader does not know")
        start, end = meta["data_offsets"]
        array = np.frombuffer(data[start:end], dtype=SAFETENSORS_DTYPES[meta["dtype"]])
        tensors[name] = torch.from_numpy(array.reshape(meta["shape"]).copy())
    return tensors


def load_state_dict(path):
    if path.endswith(".safetensors"):
        return read_safetensors(path)
    return torch.load(path, map_location="cpu")


def fold(sd, conv, bn):
    """Conv weight and bias with the batch norm that follows it folded in."""
    w = sd[f"{conv}.weight"].float()
    scale = sd[f"{bn}.weight"].float() / torch.sqrt(sd[f"{bn}.running_var"].float() + BN_EPS)
    bias = sd[f"{bn}.bias"].float() - sd[f"{bn}.running_mean"].float() * scale
    return torch.nn.Parameter(w * scale.reshape(-1, 1, 1, 1), requires_grad=False), \
        torch.nn.Parameter(bias, requires_grad=False)


class Conv(torch.nn.Module):
    def __init__(self, sd, conv, bn, stride, groups, size, act):
        super().__init__()
        self.weight, self.bias = fold(sd, conv, bn)
        k = self.weight.shape[-1]
        self.stride, self.groups, self.act = stride, groups, act
        top, bottom = same_padding(size, k, stride)
        # Symmetric padding goes into the convolution; asymmetric (stride 2) is a separate pad.
        if top == bottom:
            self.conv_pad, self.pre_pad = top, None
        else:
            self.conv_pad, self.pre_pad = 0, (top, bottom, top, bottom)
        self.out_size = math.ceil(size / stride)

    def forward(self, x):
        if self.pre_pad is not None:
            x = F.pad(x, self.pre_pad)
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.conv_pad, 1, self.groups)
        return F.relu6(y) if self.act else y


class Block(torch.nn.Module):
    def __init__(self, sd, p, c_in, expand, kernel, stride, c_out, size):
        super().__init__()
        hidden = c_in * expand
        self.expand = Conv(sd, f"{p}._expand_conv", f"{p}._bn0", 1, 1, size, True) if expand != 1 else None
        self.dw = Conv(sd, f"{p}._depthwise_conv", f"{p}._bn1", stride, hidden, size, True)
        self.project = Conv(sd, f"{p}._project_conv", f"{p}._bn2", 1, 1, self.dw.out_size, False)
        self.residual = stride == 1 and c_in == c_out
        self.out_size = self.dw.out_size

    def forward(self, x):
        y = x if self.expand is None else self.expand(x)
        y = self.project(self.dw(y))
        return y + x if self.residual else y


class Lite0(torch.nn.Module):
    def __init__(self, sd, size):
        super().__init__()
        self.stem = Conv(sd, "_conv_stem", "_bn0", 2, 1, size, True)
        size, c, blocks = self.stem.out_size, 32, []
        for expand, kernel, stride, repeats, c_out in STAGES:
            for r in range(repeats):
                b = Block(sd, f"_blocks.{len(blocks)}", c, expand, kernel, stride if r == 0 else 1, c_out, size)
                blocks.append(b)
                size, c = b.out_size, c_out
        self.blocks = torch.nn.Sequential(*blocks)
        self.head = Conv(sd, "_conv_head", "_bn1", 1, 1, size, True)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x))).mean((2, 3))


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# Timed rounds kept even past --max-seconds, for a median.
MIN_TIMED_ROUNDS = 3


def timed(model, x, min_images, min_rounds, max_seconds=None):
    """Best and median seconds per image over repeated forward passes (after warm-up): at least
    min_rounds and min_images, or fewer (never under MIN_TIMED_ROUNDS) past max_seconds."""
    with torch.inference_mode():
        # The JIT's profiling executor optimises the graph during the first runs; cuDNN
        # picks its algorithms in the first one.
        for _ in range(3):
            model(x)
        synchronize(x.device)
        planned = max(min_rounds, -(-min_images // x.shape[0]))
        per_image = []
        timing = time.perf_counter()
        for _ in range(planned):
            start = time.perf_counter()
            model(x)
            synchronize(x.device)
            per_image.append((time.perf_counter() - start) / x.shape[0])
            out_of_time = max_seconds is not None and time.perf_counter() - timing > max_seconds
            if out_of_time and len(per_image) >= MIN_TIMED_ROUNDS:
                break
        rounds = len(per_image)
    per_image.sort()
    return per_image[0], per_image[len(per_image) // 2], rounds


def eager(model, x):
    return model, x


def channels_last(model, x):
    return model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)


def jit_frozen(model, x):
    m, xi = channels_last(model, x)
    with torch.inference_mode():
        traced = torch.jit.trace(m, xi)
    return torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval())), xi


# The set-ups --setups chooses from: (model, input) → (module to time, its input).
SETUPS = {"eager": eager, "channels_last": channels_last, "jit_frozen": jit_frozen}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", required=True,
                    help="efficientnet-lite0.safetensors (or the legacy efficientnet-lite0-57934424.pth)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-images", type=int, default=64)
    ap.add_argument("--min-rounds", type=int, default=5)
    ap.add_argument("--max-seconds", type=float, help="stop timing a batch size after this long (3 rounds at least)")
    ap.add_argument("--setups", default="eager,channels_last,jit_frozen")
    ap.add_argument("--check-input")
    ap.add_argument("--check-output")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    sd = load_state_dict(args.weights)
    model = Lite0(sd, args.size).eval().to(device)
    s = args.size

    fixed = None
    if args.check_input:
        fixed = torch.from_numpy(np.fromfile(args.check_input, dtype="<f4").reshape(-1, 3, s, s))
        with torch.inference_mode():
            model(fixed.to(device)).cpu().numpy().astype("<f4").tofile(args.check_output)

    torch.manual_seed(0)
    for batch in [int(b) for b in args.batches.split(",") if b.strip()]:
        if fixed is None:
            x = torch.randn(batch, 3, s, s)
        else:
            x = fixed.repeat(-(-batch // fixed.shape[0]), 1, 1, 1)[:batch].contiguous()
        x = x.to(device)
        for setup in args.setups.split(","):
            if setup not in SETUPS:
                sys.exit(f"unknown set-up {setup}")
            line = {"engine": "pytorch", "setup": setup, "device": str(device), "size": s, "batch": batch,
                    "threads": torch.get_num_threads(), "torch": torch.__version__}
            if device.type == "cuda":
                line["gpu"] = torch.cuda.get_device_name(device)
            try:
                m, xi = SETUPS[setup](model, x)
                best, median, rounds = timed(m, xi, args.min_images, args.min_rounds, args.max_seconds)
                line.update({"rounds": rounds, "best_ms_per_image": best * 1e3,
                             "median_ms_per_image": median * 1e3, "images_per_s": 1.0 / median})
            except RuntimeError as err:
                line["error"] = str(err).strip().splitlines()[0]
            model = model.to(memory_format=torch.contiguous_format)
            print(json.dumps(line), flush=True)

if __name__ == "__main__":
    main()
