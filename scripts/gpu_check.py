"""lookalike's GPU check (issue 10), run by scripts/gpu-check.sh from a bundle made by
scripts/gpu-bundle.sh: prebuilt binaries, the weights, 8 real images and a small labelled
catalogue. Needs only Python 3 with numpy and PyTorch, and the GPU's driver: no Rust toolchain,
no network. With --device cpu it is the dry run CI runs: the same steps, smaller sizes.

What it checks (each check that does not hold fails the run, exit status 1, after every step
has run and the JSON is written, so one run on a lent GPU tells everything):
  features    the 8 images, decoded and preprocessed by the service's own code (embed_bench
              --check-images), embedded on the device and on the CPU: max |device - CPU| within
              FEATURE_TOLERANCE; PyTorch on the device, same weights file and pixels: max
              |PyTorch - lookalike| within FEATURE_TOLERANCE.
  finetune    `lookalike serve --device D` on a fresh data dir with an API key; the catalogue
              ingested over HTTP; /readyz names the device; a finetune job over HTTP succeeds
              and is promoted; a search answers with the new model. The same on the CPU as the
              reference: held-out MAP@R before and after within MAP_TOLERANCE of it.
  throughput  embedding images/s at 224 px (dry run: 64) per batch size, lookalike (embed_bench)
              against PyTorch's fastest set-up (bench/embed/peer_torch.py) on the same device,
              weights and pixels (the 8 images repeated), with the ratio. Measured, not checked,
              beyond both engines running.

Usage: gpu_check.py --device cpu|cuda|cuda:N --bundle DIR --bin DIR --out FILE [--profile gpu|dry]
(--profile: the sizes; by default "dry" on the CPU and "gpu" on a GPU. `--device cpu --profile gpu`
rehearses the GPU run's sizes and time limit on a CPU.)
"""

import argparse
import json
import os
import platform
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import numpy as np

# Largest |a - b| allowed between two engines' or devices' pooled features (values reach 6).
FEATURE_TOLERANCE = 1e-3
# Largest difference allowed between the device's held-out MAP@R and the CPU's: before the
# finetune both rank with the same pretrained features (to 1e-3), so only ties may move;
# after it, training in another summation order ends in a slightly different head.
MAP_TOLERANCE = {"before": 0.01, "after": 0.05}
# Sizes per run. `size` is the input side of the feature check and the throughput table: 224,
# the service's default, on the GPU; the dry run only has to finish in a minute or two on a busy
# 2-core machine, so its input, rounds and finetune input are smaller. `max_seconds` bounds the
# timing of one batch size by one engine (3 rounds at least): the whole run has to fit in
# `time_limit_s`, and lookalike's speed on a GPU is what is being found out.
PROFILES = {
    "gpu": {"size": 224, "batches": [1, 32, 128], "min_images": 256, "min_rounds": 10, "max_seconds": 20,
            "setups": "eager,channels_last,jit_frozen", "finetune_input_size": 224, "time_limit_s": 450},
    "dry": {"size": 64, "batches": [1, 8, 32], "min_images": 32, "min_rounds": 2, "max_seconds": 5,
            "setups": "eager", "finetune_input_size": 64, "time_limit_s": 300},
}
# Finetune params: a fifth of each label held out (more queries than the default tenth, for a
# steadier MAP@R on a small catalogue); a fixed seed, so the CPU and the device split alike.
# promote: always, since the check is of the pipeline on each device, not of the model's quality.
# The head alone: it is what trains on the GPU (trained blocks train on the CPU).
FINETUNE_PARAMS = {"seed": 0, "holdout": 0.2, "promote": "always", "trainable_blocks": 0, "pretrained_share": 0}
DATASET = "gpucheck"
# Where Debian's OpenBLAS build lives; PyTorch on the CPU uses it when present (bench/embed.sh).
OPENBLAS = "/usr/lib/x86_64-linux-gnu/openblas-pthread"


class Run:
    """The checks so far, the report being built, and the time left."""

    def __init__(self, args, profile):
        self.args, self.profile = args, profile
        self.start = time.monotonic()
        self.deadline = self.start + profile["time_limit_s"]
        self.checks = []
        self.report = {"device": args.device, "dry_run": args.device == "cpu", "profile": profile,
                       "tolerances": {"features": FEATURE_TOLERANCE, "map_at_r": MAP_TOLERANCE},
                       "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def check(self, name, passed, value=None, limit=None, detail=""):
        self.checks.append({"name": name, "passed": bool(passed), "value": value, "limit": limit,
                            "detail": detail})
        mark = "ok" if passed else "FAILED"
        shown = "" if value is None else f" {value:.3g}" if isinstance(value, float) else f" {value}"
        bound = "" if limit is None else f" (limit {limit})"
        print(f"   [{mark}] {name}:{shown}{bound} {detail}".rstrip(), flush=True)

    def left(self, cap):
        """Seconds a step may take: its own cap, or what is left of the run's limit."""
        left = self.deadline - time.monotonic()
        if left <= 5:
            raise StepFailed(f"the run's time limit of {self.profile['time_limit_s']} s is spent")
        return min(cap, left)


class StepFailed(Exception):
    """A step that could not finish; `partial` is what its tool printed before it was stopped."""

    def __init__(self, message, partial=""):
        super().__init__(message)
        self.partial = partial


def run_tool(run, argv, cap, env=None):
    """Runs a bundled tool; its stdout as text. Fails the step on a non-zero exit or time-out."""
    name = " ".join(os.path.basename(a) for a in argv[:2])
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=run.left(cap),
                              env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired as err:
        partial = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else err.stdout or ""
        raise StepFailed(f"{name} ran past {err.timeout:.0f} s", partial) from err
    if done.returncode != 0:
        raise StepFailed(f"{name} exited {done.returncode}: {done.stderr.strip()[-1500:]}")
    return done.stdout


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def measurements(run, what, argv, cap, env=None):
    """The JSON lines a timing tool printed. One that runs out of time fails a check, and the
    lines it printed before are kept: a slow engine still shows what it measured."""
    def step():
        try:
            return json_lines(run_tool(run, argv, cap, env))
        except StepFailed as err:
            lines = json_lines(err.partial)
            if not lines:
                raise
            run.check(f"{what} finished", False, detail=f"{err}; keeping the {len(lines)} lines it printed")
            return lines
    return attempt(run, what, step)


def read_f32(path):
    return np.fromfile(path, dtype="<f4")


# ---- 1 and 3: features of real images, and throughput, lookalike against PyTorch

def attempt(run, what, step):
    """Runs one step, timed; a failure is a failed check, and the run goes on to the next step."""
    started = time.monotonic()
    try:
        return step()
    except (StepFailed, OSError, KeyError, ValueError, StopIteration) as err:
        run.check(f"{what} ran", False, detail=f"{type(err).__name__}: {err}")
        return None
    finally:
        seconds = time.monotonic() - started
        run.report.setdefault("steps_s", {})[what] = round(seconds, 1)
        print(f"   ({what}: {seconds:.0f} s)", flush=True)


def features_and_throughput(run, work, images, weights):
    args, profile, size = run.args, run.profile, run.profile["size"]
    embed_bench = os.path.join(args.bin, "embed_bench")
    batches = ",".join(str(b) for b in profile["batches"])
    common = [weights, "--size", str(size), "--check-images", ",".join(images)]
    pixels, cpu, dev, torch_out = (os.path.join(work, f) for f in ("pixels.f32", "cpu.f32", "device.f32", "torch.f32"))
    timing = ["--batches", batches, "--min-images", str(profile["min_images"]),
              "--min-rounds", str(profile["min_rounds"]), "--max-seconds", str(profile["max_seconds"])]
    features = run.report["features"] = {"images": [os.path.basename(i) for i in images], "size": size}

    print("== features of the 8 images on the CPU (reference), with the pixels fed", flush=True)
    reference = attempt(run, "embed_bench on the CPU", lambda: run_tool(
        run, [embed_bench, *common, "--device", "cpu", "--batches", "", "--check-output", cpu,
              "--check-pixels", pixels], cap=120))
    print(f"== features on {args.device}, and lookalike's images/s at batches {batches}", flush=True)
    ours = measurements(run, f"embed_bench on {args.device}",
                        [embed_bench, *common, "--device", args.device, *timing, "--check-output", dev], cap=240)
    if reference is not None and ours is not None:
        diff = float(np.abs(read_f32(dev) - read_f32(cpu)).max())
        run.check(f"features {args.device} vs cpu, 8 images, max |diff|", diff <= FEATURE_TOLERANCE, diff,
                  FEATURE_TOLERANCE)
        features.update({"largest_value": float(np.abs(read_f32(cpu)).max()), "max_abs_diff_device_vs_cpu": diff})
    if reference is None:
        return

    print(f"== PyTorch on {args.device}: the same pixels, then images/s (set-ups {profile['setups']})", flush=True)
    env = {}
    if args.device == "cpu" and os.path.isdir(OPENBLAS):
        env = {"LD_LIBRARY_PATH": OPENBLAS, "OPENBLAS_NUM_THREADS": "1"}
    theirs = measurements(run, f"PyTorch on {args.device}",
                          [sys.executable, os.path.join(args.bundle, "peer_torch.py"), "--weights", weights,
                           "--device", args.device, "--size", str(size), "--threads", str(os.cpu_count()), *timing,
                           "--setups", profile["setups"], "--check-input", pixels, "--check-output", torch_out],
                          cap=300, env=env)
    if theirs is None:
        theirs = []
    else:
        compared_with = dev if ours is not None else cpu
        diff = float(np.abs(read_f32(torch_out) - read_f32(compared_with)).max())
        run.check(f"features PyTorch on {args.device} vs lookalike on {args.device if ours is not None else 'cpu'}, "
                  "max |diff|", diff <= FEATURE_TOLERANCE, diff, FEATURE_TOLERANCE)
        features["max_abs_diff_pytorch_vs_lookalike"] = diff
        run.report["environment"]["pytorch"] = theirs[0].get("torch") if theirs else None
        run.report["environment"]["gpu"] = next((r["gpu"] for r in theirs if r.get("gpu")), None)

    rows = []
    for batch in profile["batches"]:
        mine = next((r for r in ours or [] if r["batch"] == batch), None)
        peers = [r for r in theirs if r["batch"] == batch and "error" not in r]
        for failed in (r for r in theirs if r["batch"] == batch and "error" in r):
            print(f"   PyTorch {failed['setup']} at batch {batch} failed: {failed['error']}")
        best = max(peers, key=lambda r: r["images_per_s"], default=None)
        rows.append({"batch": batch, "lookalike_images_per_s": mine and mine["images_per_s"],
                     "pytorch_images_per_s": best and best["images_per_s"], "pytorch_setup": best and best["setup"],
                     "ratio": mine and best and mine["images_per_s"] / best["images_per_s"]})
        run.check(f"both engines timed at batch {batch}", mine is not None and best is not None)
    run.report["throughput"] = {"size": size, "rows": rows, "lookalike": ours, "pytorch": theirs}


# ---- 2: a finetune job through the real server

class Server:
    """`lookalike serve` on a free port with its own data dir and admin key, until stopped."""

    def __init__(self, run, work, label, device, weights, input_size):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url, self.key = f"http://127.0.0.1:{port}", secrets.token_hex(16)
        self.log_path = os.path.join(work, f"server-{label}.log")
        env = {**os.environ, "LOOKALIKE__SERVER__ADDR": f"127.0.0.1:{port}",
               "LOOKALIKE__DATA_DIR": os.path.join(work, f"data-{label}"),
               "LOOKALIKE__MODEL__WEIGHTS": weights, "LOOKALIKE__MODEL__FETCH_IF_MISSING": "false",
               "LOOKALIKE__MODEL__INPUT_SIZE": str(input_size), "LOOKALIKE__AUTH__ADMIN_KEYS": self.key}
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen([os.path.join(run.args.bin, "lookalike"), "serve", "--device", device],
                                        stdout=self.log, stderr=subprocess.STDOUT, env=env)
        # No proxy for the local server, whatever the environment says.
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def call(self, method, path, body=None, content_type=None, timeout=60):
        request = urllib.request.Request(self.url + path, data=body, method=method)
        request.add_header("Authorization", f"Bearer {self.key}")
        if content_type:
            request.add_header("Content-Type", content_type)
        try:
            with self.opener.open(request, timeout=timeout) as answer:
                return json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as err:
            raise StepFailed(f"{method} {path}: {err.code} {err.read()[:500].decode(errors='replace')}") from err

    def wait_ready(self, run, cap):
        until = time.monotonic() + run.left(cap)
        while time.monotonic() < until:
            if self.process.poll() is not None:
                raise StepFailed(f"the server exited ({self.process.returncode}): {self.log_tail()}")
            try:
                return self.call("GET", "/readyz", timeout=5)
            except (StepFailed, OSError):
                time.sleep(0.5)
        raise StepFailed(f"the server was not ready within {cap} s: {self.log_tail()}")

    def wait_job(self, run, job_id, cap):
        until = time.monotonic() + run.left(cap)
        while time.monotonic() < until:
            job = self.call("GET", f"/jobs/{job_id}")
            if job["status"] in ("succeeded", "failed", "canceled"):
                return job
            time.sleep(0.5)
        raise StepFailed(f"job {job_id} did not finish within {cap} s (stage {job['stage']})")

    def log_tail(self):
        self.log.flush()
        with open(self.log_path) as f:
            return "".join(f.readlines()[-15:])

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def multipart(fields, files):
    """A multipart/form-data body and its content type."""
    boundary = secrets.token_hex(16)
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data, content_type) in files.items():
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                f"Content-Type: {content_type}\r\n\r\n")
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def finetune_on(run, work, label, device, weights, catalogue, query_image):
    """Ingests the catalogue and runs one finetune job on `device`; the figures to compare."""
    input_size = run.profile["finetune_input_size"]
    started = time.monotonic()
    server = Server(run, work, label, device, weights, input_size)
    try:
        ready = server.wait_ready(run, cap=180)
        expected = "cpu" if device == "cpu" else device if ":" in device else f"{device}:0"
        run.check(f"[{device}] /readyz names the device", ready.get("device") == expected,
                  ready.get("device"), expected)
        with open(catalogue, "rb") as f:
            archive = ("catalogue.zip", f.read(), "application/zip")
        body, content_type = multipart({"name": DATASET}, {"archive": archive})
        ingest = server.wait_job(run, server.call("POST", "/datasets", body, content_type)["job"]["id"], cap=240)
        run.check(f"[{device}] ingest job succeeded", ingest["status"] == "succeeded", ingest["status"],
                  detail=json.dumps(ingest.get("error")) if ingest.get("error") else "")
        job = server.call("POST", "/jobs", json.dumps({"kind": "finetune", "dataset": DATASET,
                                                       "params": FINETUNE_PARAMS}).encode(), "application/json")
        job = server.wait_job(run, job["id"], cap=300)
        result = job.get("result") or {}
        run.check(f"[{device}] finetune job succeeded", job["status"] == "succeeded", job["status"],
                  detail=json.dumps(job.get("error")) if job.get("error") else "")
        run.check(f"[{device}] finetuned model promoted", result.get("promoted") is True, result.get("promoted"))
        with open(query_image, "rb") as f:
            answer = server.call("POST", f"/search?dataset={DATASET}&k=5", f.read(), "image/png")
        run.check(f"[{device}] search answers with the new model",
                  answer["model"] == result.get("model") and len(answer["results"]) == 5, answer["model"])
        evaluation = result.get("eval", {})
        return {"device": ready.get("device"), "input_size": input_size, "items": ingest["result"]["ingested"],
                "ingest_images_per_s": ingest["result"]["images_per_second"],
                "queries": evaluation.get("queries"), "gallery": evaluation.get("gallery"),
                "map_at_r": {"before": evaluation["before"]["map_at_r"], "after": evaluation["after"]["map_at_r"]},
                "recall_at_1": {"before": evaluation["before"]["recall_at_1"],
                                "after": evaluation["after"]["recall_at_1"]},
                "promoted": result.get("promoted"), "model": result.get("model"),
                "training": result.get("training"), "job_seconds": result.get("seconds"),
                "wall_s": time.monotonic() - started}
    except StepFailed as err:
        raise StepFailed(f"{err}\nserver log:\n{server.log_tail()}") from err
    finally:
        server.stop()


def finetune(run, work, weights, catalogue, query_image):
    device = run.args.device
    figures = run.report["finetune"] = {"params": FINETUNE_PARAMS}
    # The device first: it is what is checked; the CPU run is the reference.
    for label, on in (("device", device), ("cpu", "cpu")):
        print(f"== finetune on {on} ({'checked' if label == 'device' else 'reference'}): "
              "ingest the catalogue over HTTP, one finetune job", flush=True)
        figures[label] = attempt(run, f"finetune on {on}",
                                 lambda: finetune_on(run, work, label, on, weights, catalogue, query_image))
    if figures["device"] and figures["cpu"]:
        for when, limit in MAP_TOLERANCE.items():
            ours, reference = figures["device"]["map_at_r"][when], figures["cpu"]["map_at_r"][when]
            run.check(f"held-out MAP@R {when}: {device} {ours:.4f} vs cpu {reference:.4f}, |diff|",
                      abs(ours - reference) <= limit, abs(ours - reference), limit)


# ---- the report

def environment(args):
    env = {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version()}
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True)
        env["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    manifest = os.path.join(args.bundle, "manifest.json")
    if os.path.exists(manifest):
        with open(manifest) as f:
            env["bundle"] = {k: v for k, v in json.load(f).items() if k != "files"}
    return env


def print_tables(run):
    report = run.report
    print(f"\n== lookalike GPU check on {args_device(report)}: "
          f"{sum(c['passed'] for c in run.checks)}/{len(run.checks)} checks passed in {report['wall_s']:.0f} s")
    if "throughput" in report:
        print("\n| input | batch | lookalike images/s | PyTorch images/s (best set-up) | ratio |")
        print("|---|--:|--:|--:|--:|")
        for r in report["throughput"]["rows"]:
            peer = f"{r['pytorch_images_per_s']:.1f} ({r['pytorch_setup']})" if r["pytorch_images_per_s"] else "failed"
            ratio = f"{r['ratio']:.2f}" if r["ratio"] else "-"
            ours = f"{r['lookalike_images_per_s']:.1f}" if r["lookalike_images_per_s"] else "failed"
            size = report["throughput"]["size"]
            print(f"| {size}×{size} | {r['batch']} | {ours} | {peer} | {ratio} |")
    if "finetune" in report:
        print("\n| finetune | device | input px | items | held-out queries | MAP@R before | MAP@R after "
              "| promoted | job s |")
        print("|---|---|--:|--:|--:|--:|--:|---|--:|")
        for name in ("device", "cpu"):
            f = report["finetune"].get(name)
            if f:
                role = "reference" if name == "cpu" else "checked"
                print(f"| {role} | {f['device']} | {f['input_size']} | {f['items']} | {f['queries']} "
                      f"| {f['map_at_r']['before']:.4f} | {f['map_at_r']['after']:.4f} "
                      f"| {f['promoted']} | {f['job_seconds']['total']:.1f} |")
    failed = [c for c in run.checks if not c["passed"]]
    for c in failed:
        value = "" if c["value"] is None else f" {c['value']}"
        limit = "" if c["limit"] is None else f" (limit {c['limit']})"
        print(f"FAILED: {c['name']}:{value}{limit} {c['detail']}")


def args_device(report):
    gpu = report.get("environment", {}).get("gpu")
    return report["device"] + (f" ({gpu})" if gpu else "") + (" — dry run" if report["dry_run"] else "")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cpu (the dry run), cuda or cuda:N")
    ap.add_argument("--bundle", required=True, help="the folder gpu-bundle.sh made")
    ap.add_argument("--bin", required=True, help="the folder holding the unpacked lookalike and embed_bench")
    ap.add_argument("--out", required=True, help="the JSON report to write")
    ap.add_argument("--profile", choices=sorted(PROFILES), help="sizes (default: dry on the CPU, gpu on a GPU)")
    args = ap.parse_args()
    profile = PROFILES[args.profile or ("dry" if args.device == "cpu" else "gpu")]
    run = Run(args, profile)
    run.report["environment"] = environment(args)
    weights = os.path.join(args.bundle, "weights", "efficientnet-lite0.safetensors")
    images = sorted(os.path.join(args.bundle, "images", f) for f in os.listdir(os.path.join(args.bundle, "images")))
    catalogue = os.path.join(args.bundle, "catalogue.zip")
    query_image = next(i for i in images if i.endswith(".png"))
    work = tempfile.mkdtemp(prefix="lookalike-gpu-check-")
    try:
        features_and_throughput(run, work, images, weights)
        finetune(run, work, weights, catalogue, query_image)
    finally:
        # The servers' logs go beside the report; the rest of the scratch folder is dropped.
        logs = os.path.splitext(args.out)[0] + "-logs"
        os.makedirs(logs, exist_ok=True)
        for name in os.listdir(work):
            if name.endswith(".log"):
                shutil.copy(os.path.join(work, name), logs)
        shutil.rmtree(work, ignore_errors=True)
    run.report["checks"] = run.checks
    run.report["passed"] = bool(run.checks) and all(c["passed"] for c in run.checks)
    run.report["wall_s"] = time.monotonic() - run.start
    with open(args.out, "w") as f:
        json.dump(run.report, f, indent=2)
    print_tables(run)
    print(f"\nreport: {args.out}")
    if not run.report["passed"]:
        sys.exit(f"GPU check FAILED on {args.device}: {sum(not c['passed'] for c in run.checks)} check(s) did not hold")
    print(f"GPU check passed on {args_device(run.report)}")


if __name__ == "__main__":
    main()
