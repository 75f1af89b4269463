"""Time and peak memory of similarity_queryscoring against the matmul floor, in one run.

The floor is the one matmul every method must do: unit texts [T, D] against all unit frames
[V*F, D]. Each measurement runs in a fresh subprocess so that peak RSS belongs to it alone.

    python bench/bench_query_scoring.py            # the README's figures
    python bench/bench_query_scoring.py --quick    # small sizes, a smoke run
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def reference_release(text, vids, temperature=0.1, eps=1e-8):
    """The reference release's formula, which builds a [T, V, F, D] tensor."""
    import torch
    text_unit = text / text.norm(dim=1, keepdim=True).clamp_min(eps)
    frame_units = vids / vids.norm(dim=2, keepdim=True).clamp_min(eps)
    weights = torch.softmax(torch.einsum("t d, v f d -> t v f", text_unit, frame_units)
                            / temperature, dim=2)
    pooled = torch.einsum("v f d, t v f -> t v f d", vids, weights).sum(dim=2)
    pooled = pooled / pooled.norm(dim=2, keepdim=True).clamp_min(eps)
    return torch.einsum("t d, t v d -> t v", text_unit, pooled)


def make_inputs(T, V, F, D):
    import torch
    g = torch.Generator().manual_seed(0)
    return torch.randn(T, D, generator=g), torch.randn(V, F, D, generator=g)


def prepare(name, text, vids):
    """A zero-argument call of the named method on these inputs (set-up done outside it)."""
    from query_scoring import similarity_queryscoring
    if name == "floor":
        V, F, D = vids.shape
        text_unit = text / text.norm(dim=1, keepdim=True)
        frame_units = (vids / vids.norm(dim=2, keepdim=True)).reshape(V * F, D)
        return lambda: text_unit @ frame_units.T
    if name == "queryscoring":
        return lambda: similarity_queryscoring(text, vids, temperature=0.1)
    return lambda: reference_release(text, vids)


def measure_times(names, size, repeats):
    """Child: the named methods run in turn, `repeats` rounds; best time of each.

    Interleaving puts the floor and the method under the same machine conditions."""
    text, vids = make_inputs(*size)
    fns = {name: prepare(name, text, vids) for name in names}
    best = {name: float("inf") for name in names}
    for _ in range(repeats):
        for name in names:
            start = time.perf_counter()
            out = fns[name]()
            best[name] = min(best[name], time.perf_counter() - start)
            del out
    return best


def measure_peak(name, size):
    """Child: peak RSS added by one call over the RSS just before it (Linux /proc)."""
    fn = prepare(name, *make_inputs(*size))
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS
    before_kb = _proc_status_kb("VmRSS")
    fn()
    return (_proc_status_kb("VmHWM") - before_kb) / 1024


def _proc_status_kb(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def run_child(*child_args):
    cmd = [sys.executable, __file__, "--child", *map(str, child_args)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, size, *names = args.child
        size = tuple(int(x) for x in size.split(","))
        result = measure_times(names, size, args.repeats) if kind == "times" \
            else measure_peak(names[0], size)
        print(json.dumps(result))
        return
    import torch
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, CPU; best of "
          f"{args.repeats} interleaved rounds; peak RSS over the call, a fresh process each")
    sizes = [(50, 50, 16, 64), (50, 50, 120, 64)] if args.quick else \
        [(1000, 1000, 16, 512), (1000, 1000, 120, 512)]
    for size in sizes:
        times, peaks = compare(size, "floor", args.repeats)
        print(f"T,V,F,D={size}: matmul floor {times['floor']:.3f} s, similarity_queryscoring "
              f"{times['queryscoring']:.3f} s ({times['queryscoring'] / times['floor']:.2f}x "
              f"floor), peak +{peaks['queryscoring']:.0f} MB (floor's output alone "
              f"+{peaks['floor']:.0f} MB)")
    small = (20, 20, 16, 64) if args.quick else (200, 200, 16, 512)
    times, peaks = compare(small, "release", args.repeats)
    print(f"T,V,F,D={small}: reference release formula {times['release']:.3f} s, peak "
          f"+{peaks['release']:.0f} MB; similarity_queryscoring {times['queryscoring']:.3f} s, "
          f"peak +{peaks['queryscoring']:.0f} MB; speed-up "
          f"{times['release'] / times['queryscoring']:.1f}x")


def compare(size, baseline, repeats):
    """Best times (interleaved in one child) and peak MB (one child each) of baseline and ours."""
    size_arg = ",".join(map(str, size))
    names = (baseline, "queryscoring")
    times = run_child("times", size_arg, *names, "--repeats", repeats)
    peaks = {name: run_child("peak", size_arg, name) for name in names}
    return times, peaks

if __name__ == "__main__":
    main()
