"""Time and peak memory of similarity_queryscoring against the matmul floor, in one run.

The floor is the one matmul every method must do: unit texts [T, D] against all unit frames
[V*F, D]. Each measurement runs in a fresh subprocess so that peak RSS belongs to it alone.

    python bench/bench_query_scoring.py            # the README's figures
    python bench/bench_query_scoring.py --quick    # small sizes, a smoke run
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

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


def measure(method, T, V, F, D, repeats):
    """Runs in the child: returns best-of-repeats seconds and the peak RSS added by the call."""
    import torch
    from query_scoring import similarity_queryscoring
    g = torch.Generator().manual_seed(0)
    text = torch.randn(T, D, generator=g)
    vids = torch.randn(V, F, D, generator=g)
    if method == "floor":
        text_unit = text / text.norm(dim=1, keepdim=True)
        frame_units = (vids / vids.norm(dim=2, keepdim=True)).reshape(V * F, D)
        fn = lambda: text_unit @ frame_units.T  # noqa: E731
    elif method == "queryscoring":
        fn = lambda: similarity_queryscoring(text, vids, temperature=0.1)  # noqa: E731
    else:
        fn = lambda: reference_release(text, vids)  # noqa: E731
    rss_before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
        del out
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before_kb
    return {"seconds": min(times), "peak_mb": peak_kb / 1024}


def run_child(method, size, repeats):
    cmd = [sys.executable, __file__, "--child", method, ",".join(map(str, size)),
           "--repeats", str(repeats)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "T,V,F,D"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        size = tuple(int(x) for x in args.child[1].split(","))
        print(json.dumps(measure(args.child[0], *size, args.repeats)))
        return
    import torch
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, CPU")
    sizes = [(50, 50, 16, 64), (50, 50, 120, 64)] if args.quick else \
        [(1000, 1000, 16, 512), (1000, 1000, 120, 512)]
    for size in sizes:
        floor = run_child("floor", size, args.repeats)
        ours = run_child("queryscoring", size, args.repeats)
        print(f"T,V,F,D={size}: matmul floor {floor['seconds']:.3f} s, "
              f"similarity_queryscoring {ours['seconds']:.3f} s "
              f"({ours['seconds'] / floor['seconds']:.2f}x floor), peak +{ours['peak_mb']:.0f} MB "
              f"(floor's output alone +{floor['peak_mb']:.0f} MB)")
    small = (20, 20, 16, 64) if args.quick else (200, 200, 16, 512)
    ref = run_child("release", small, args.repeats)
    ours = run_child("queryscoring", small, args.repeats)
    print(f"T,V,F,D={small}: reference release formula {ref['seconds']:.3f} s, peak "
          f"+{ref['peak_mb']:.0f} MB; similarity_queryscoring {ours['seconds']:.3f} s, peak "
          f"+{ours['peak_mb']:.0f} MB; speed-up {ref['seconds'] / ours['seconds']:.1f}x")


if __name__ == "__main__":
    main()
