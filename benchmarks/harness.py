"""What every benchmark shares: timing, peak extra memory, the table and the JSON.

Timing is the median of repeated runs after warm-up; on CUDA, events bracket
each run. Peak extra memory is the high-water mark of bytes allocated during
one call above what was allocated before it (its output included): on CUDA
from the caching allocator's statistics, on the CPU from the profiler's
allocation events (torch tensors) plus tracemalloc (NumPy and SciPy buffers).
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import time
import tracemalloc

import torch


def parse_args(description, extra=None):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per contestant")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", default=None, help="where to save the results (default benchmarks/results/, "
                        "committed: README and RESULTS render their tables from it)")
    parser.add_argument("--quick", action="store_true", help="smaller cases, fewer repeats (smoke test)")
    if extra:
        extra(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA device")
    return args


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def median_ms(fn, device, repeats, warmup=2):
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _cpu_torch_peak(prof):
    events = [
        e for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    ]
    current = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        current += e.nbytes()
        peak = max(peak, current)
    return peak


def peak_extra_bytes(fn, device):
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        del out
        return peak
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True) as prof:
        tracemalloc.start()
        try:
            out = fn()
            del out
            _, numpy_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    # Read the profiler only after tracemalloc stopped: its own objects are not the op's.
    return _cpu_torch_peak(prof) + numpy_peak


def measure(fn, device, repeats):
    return {"ms": median_ms(fn, device, repeats), "peak_bytes": peak_extra_bytes(fn, device)}


def machine(device):
    info = {
        "date": datetime.date.today().isoformat(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def mb(nbytes):
    return nbytes / 2**20


def print_table(title, rows):
    """rows: dicts with case, peer, peer_ms, ours_ms, peer_peak_bytes, ours_peak_bytes (and
    optional target); speed-up and memory ratio are derived."""
    header = ["case", "peer", "peer ms", "ours ms", "speed-up", "peer MiB", "ours MiB", "memory", "target"]
    lines = []
    for r in rows:
        lines.append([
            r["case"], r["peer"], f"{r['peer_ms']:.2f}", f"{r['ours_ms']:.2f}",
            f"{r['peer_ms'] / r['ours_ms']:.1f}x",
            f"{mb(r['peer_peak_bytes']):.1f}", f"{mb(r['ours_peak_bytes']):.1f}",
            f"{r['ours_peak_bytes'] / max(r['peer_peak_bytes'], 1):.2f}x",
            r.get("target", ""),
        ])
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    fmt = " | ".join("{:<%d}" % w for w in widths)
    print(f"\n{title}")
    print(fmt.format(*header))
    print("-+-".join("-" * w for w in widths))
    for line in lines:
        print(fmt.format(*line))


def plot_sweep(points, path, title, peer_label):
    """Time and peak extra memory against G (log-log), ours beside the peer's where measured: points are dicts
    with G, ours_ms, ours_peak_bytes and optionally peer_ms, peer_peak_bytes."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot")
        return
    peer = [e for e in points if "peer_ms" in e]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    ax_t.loglog([e["G"] for e in points], [e["ours_ms"] for e in points], "o-", label="mutualops")
    ax_t.loglog([e["G"] for e in peer], [e["peer_ms"] for e in peer], "s-", label=peer_label)
    ax_t.set(xlabel="GT boxes per image", ylabel="time (ms)", title=title)
    ax_m.loglog([e["G"] for e in points], [max(mb(e["ours_peak_bytes"]), 1e-3) for e in points], "o-",
                label="mutualops")
    ax_m.loglog([e["G"] for e in peer], [mb(e["peer_peak_bytes"]) for e in peer], "s-", label=peer_label)
    ax_m.set(xlabel="GT boxes per image", ylabel="peak extra memory (MiB)", title="memory (outputs included)")
    for ax in (ax_t, ax_m):
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=100)
    print(f"plot: {path}")


def save_json(name, args, rows, extra=None):
    path = args.json or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", f"{name}-{args.device}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    payload = {"benchmark": name, "machine": machine(args.device), "rows": rows}
    if extra:
        payload.update(extra)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
    print(f"\nsaved {path}")
    return path


def row(case, peer, peer_result, ours_result, target=""):
    return {
        "case": case,
        "peer": peer,
        "peer_ms": peer_result["ms"],
        "ours_ms": ours_result["ms"],
        "peer_peak_bytes": peer_result["peak_bytes"],
        "ours_peak_bytes": ours_result["peak_bytes"],
        "speedup": peer_result["ms"] / ours_result["ms"],
        "target": target,
    }
