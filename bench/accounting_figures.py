"""Cost and value of the accountant's figures on extreme events (issue #12, item 3).

    .venv/bin/python -m bench.accounting_figures [--tight pld,prv]

Each case runs in a fresh subprocess: the tight figure's wall time, the Python heap's peak
(tracemalloc: NumPy's buffers included) and the growth of the process' peak RSS while it is
computed, then every figure (basic, RDP, tight) at δ = 1e-5 and which one is enforced.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import tracemalloc

from services.accountant import accounting as acc
from services.accountant.events import Charge, Gaussian, Laplace, PureEpsilon, SubsampledGaussian

DELTA = 1e-5
CASES = {
    "gaussian σ=0.05": (Gaussian(0.05), 1),
    "gaussian σ=0.2": (Gaussian(0.2), 1),
    "gaussian σ=1e-3": (Gaussian(1e-3), 1),
    "gaussian σ=1e308": (Gaussian(1e308), 1),
    "gaussian σ=2 ×2^62": (Gaussian(2.0), 2**62),
    "pure ε=1000": (PureEpsilon(1000.0), 1),
    "pure ε=1e-12 ×2^62": (PureEpsilon(1e-12), 2**62),
    "pure ε=1e-12 ×1e8": (PureEpsilon(1e-12), 10**8),
    "subsampled σ=1 q=0.01 ×1e8": (SubsampledGaussian(1.0, 0.01, steps=10**8), 1),
    "subsampled σ=1 q=0.01 ×1e4": (SubsampledGaussian(1.0, 0.01, steps=10**4), 1),
    "subsampled σ=0.3 q=0.5": (SubsampledGaussian(0.3, 0.5), 1),
    "subsampled σ=1e300 q=0.5": (SubsampledGaussian(1e300, 0.5), 1),
    "subsampled σ=2 q=0.1 ×1e7": (SubsampledGaussian(2.0, 0.1, steps=10**7), 1),
    "laplace b=1e-300 Δ=1": (Laplace(1e-300, 1.0), 1),
    "laplace b=1 Δ=1e300": (Laplace(1.0, 1e300), 1),
}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def measure(case: str, tight: str) -> dict[str, object]:
    """One case in this process: cost of the tight figure, then all figures."""
    mechanism, count = CASES[case]
    charge = Charge(mechanism, "t", "d", "k", count=count)
    comp = acc.Composition().add(acc.atoms_of(charge))
    acc.best_epsilon(acc.Composition().add({("laplace", 1.0): 1}), DELTA, tight)  # warm up
    base = _rss_mb()
    tracemalloc.start()
    start = time.perf_counter()
    figures = acc.best_epsilon(comp, DELTA, tight)
    seconds = time.perf_counter() - start
    heap = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    return {
        "case": case,
        "tight": tight,
        "seconds": seconds,
        "heap_mb": heap,
        "rss_mb": max(rss, 0.0),
        "basic": figures.basic,
        "rdp": figures.rdp,
        "value": figures.tight,
        "enforced": figures.enforced,
        "epsilon": figures.epsilon,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tight", default="pld,prv")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(measure(args.case, args.tight)))
        return
    print(
        f"{'case':28} {'tight':5} {'s':>6} {'heap MB':>8} {'ΔRSS MB':>8} "
        f"{'basic':>10} {'rdp':>10} {'tight ε':>10} enforced"
    )
    for tight in args.tight.split(","):
        for case in CASES:
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.accounting_figures",
                    "--case",
                    case,
                    "--tight",
                    tight,
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(out.stdout)
            value = "None" if r["value"] is None else f"{r['value']:.4g}"
            print(
                f"{case:28} {tight:5} {r['seconds']:6.3f} {r['heap_mb']:8.1f} {r['rss_mb']:8.1f} "
                f"{r['basic']:10.4g} {r['rdp']:10.4g} {value:>10} {r['enforced']}"
            )


if __name__ == "__main__":
    main()
