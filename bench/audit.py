"""The privacy audit across ε: each claim beside its empirical lower bounds, and the canaries.

    .venv/bin/python -m bench.audit [--quick] [--epsilons 0.5,1,2,4,8] [--samples N]
        [--per-release-samples N] [--blackbox-samples N] [--steps 10] [--seed 9]
        [--repeats 3] [--no-canaries] [--threads 2] [--plot bench/figures/audit.png]

The audit is ``veil audit``'s (``services.cli.audit``): white-box tests on the sanitizer's own
``privatize`` (batched, and one OS-seeded PCG64 generator per release), black-box tests on images
released through its own ``Pipeline`` (complement keep and erase), and the real-faces tests,
which the proof does not cover. Every bound holds with 95 % confidence; a covered bound above
its claim proves the implementation broken, a bound below it proves nothing about the claim.

The canary section runs each deliberately broken variant at ε = 1 on a ladder of sample
sizes, ``--repeats`` times each, and prints the smallest bound of the repeats: at the CI sizes
(``veil audit --quick``, used by tests/cli/test_audit.py) every canary must be flagged with
margin. Targets: the white-box bound within the claim at every ε and ≥ 0.7× the claim at
ε ≤ 2; every canary flagged.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from services.cli.audit import QUICK, Plan, Report, Row, Session, audit_with, session

EPSILONS = (0.5, 1.0, 2.0, 4.0, 8.0)
PLOT = Path(__file__).resolve().parent / "figures" / "audit.png"
TESTS = ("white-box batched", "white-box per release", "black-box keep", "black-box erase",
         "real faces keep", "real faces erase")  # fmt: skip
LADDERS: dict[str, tuple[str, tuple[int, ...]]] = {
    "halved_noise": ("samples", (100_000, 200_000, 500_000, 1_000_000)),
    "skipped_clip": ("samples", (100_000, 200_000, 500_000, 1_000_000)),
    "fixed_seed": ("per_release_samples", (30, 100, 300, 1_000)),
    "reused_xt": ("blackbox_samples", (48, 64, 96, 128)),
}
"""Each canary, the sample size that catches it, and the sizes tried (the CI size last)."""


# -- the audit across ε ----------------------------------------------------------------------


def bound(row: Row, name: str) -> str:
    test = row.get(name)
    return "-" if test is None else f"{test.bound.epsilon:.3f}"


def main_table(report: Report) -> None:
    from bench.kernels import table

    plan = report.plan
    table(
        f"claimed ε vs empirical lower bounds (confidence {plan.confidence:g}; white-box "
        f"{plan.samples:,} batched + {plan.per_release_samples:,} per-release outputs per "
        f"neighbour; black-box {plan.blackbox_samples} releases per neighbour, DDIM steps "
        f"{plan.steps}; real faces: not covered by the proof)",
        ["claim ε", "white batched", "ratio", "white per-release", "black keep", "black erase",
         "real keep", "real erase", "black ceiling", "wall s", "verdict"],
        [[f"{r.claim:g}", bound(r, TESTS[0]), ratio(r), *[bound(r, t) for t in TESTS[1:]],
          ceiling(r), f"{sum(t.seconds for t in r.tests):.1f}",
          "ABOVE CLAIM" if r.flagged else "ok"] for r in report.rows],
    )  # fmt: skip


def ratio(row: Row) -> str:
    test = row.get(TESTS[0])
    return "-" if test is None else f"{test.bound.epsilon / row.claim:.2f}"


def ceiling(row: Row) -> str:
    test = row.get(TESTS[2])
    return "-" if test is None or test.ceiling is None else f"{test.ceiling:.2f}"


def targets(report: Report, canaries: dict[str, list[list[float]]]) -> list[str]:
    """The acceptance targets, each with its verdict."""
    white = [(r.claim, r.get(TESTS[0])) for r in report.rows]
    within = all(not r.flagged for r in report.rows)
    tight = all(t is not None and t.bound.epsilon >= 0.7 * c for c, t in white if c <= 2)
    lines = [
        f"every covered bound within its claim: {'yes' if within else 'NO'}",
        f"white-box batched ≥ 0.7× the claim at ε ≤ 2: {'yes' if tight else 'NO'}",
    ]
    if canaries:
        caught = all(min(runs[-1]) > 1.0 for runs in canaries.values())
        lines.append(f"every canary flagged at its CI size, in every repeat: "
                     f"{'yes' if caught else 'NO'}")  # fmt: skip
    return lines


# -- canaries --------------------------------------------------------------------------------


async def canary_ladders(s: Session, base: Plan, repeats: int) -> dict[str, list[list[float]]]:
    """canary → per ladder size, the bounds of its repeats at ε = 1 (the largest bound of the
    tests the canary's size feeds: both black-box complements for reused_xt)."""
    off: dict[str, Any] = {"samples": 0, "per_release_samples": 0, "blackbox_samples": 0}
    out: dict[str, list[list[float]]] = {}
    for canary, (size_name, sizes) in LADDERS.items():
        out[canary] = []
        for size in sizes:
            plan = replace(base, epsilons=(1.0,), canary=canary, real_faces=False,
                           **{**off, size_name: size})  # fmt: skip
            runs = []
            for r in range(repeats):
                report = await audit_with(s, replace(plan, seed=base.seed + r))
                runs.append(max(t.bound.epsilon for t in report.rows[0].tests))
            out[canary].append(runs)
            print(f"canary {canary} {size_name}={size}: {[round(b, 3) for b in runs]}",
                  file=sys.stderr, flush=True)  # fmt: skip
    return out


def canary_table(ladders: dict[str, list[list[float]]], repeats: int) -> None:
    from bench.kernels import table

    rows: list[list[object]] = []
    for canary, runs in ladders.items():
        size_name, sizes = LADDERS[canary]
        flagged = [n for n, r in zip(sizes, runs, strict=True) if min(r) > 1.0]
        rows.append([canary, size_name.replace("_", "-"),
                     *[f"{n:,}: {min(r):.2f}" for n, r in zip(sizes, runs, strict=True)],
                     f"{flagged[0]:,}" if flagged else "never"])  # fmt: skip
    table(
        f"canaries at claim ε = 1: smallest lower bound of {repeats} repeats at each size "
        f"(CI sizes last; DDIM steps {QUICK['steps']}, CNN {QUICK['classifier_steps']} steps)",
        ["canary", "sample size of", "size 1", "size 2", "size 3", "CI size", "flagged from"],
        rows,
    )


# -- plot ------------------------------------------------------------------------------------

SERIES = (
    ("white-box batched", (31, 119, 180)),
    ("white-box per release", (120, 170, 220)),
    ("black-box keep", (214, 39, 40)),
    ("black-box erase", (255, 127, 14)),
    ("real faces keep", (148, 103, 189)),
    ("real faces erase", (227, 119, 194)),
)


def plot(report: Report, path: Path) -> None:
    """Lower bounds vs the claimed ε (log₂ axis); the claim itself as the dashed diagonal,
    the largest bound the black-box releases can give as a dotted grey line. Real faces
    (hollow markers) are not covered by the proof."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font: ImageFont.ImageFont | ImageFont.FreeTypeFont = ImageFont.truetype(
            "DejaVuSans.ttf", 13
        )
    except OSError:
        font = ImageFont.load_default()
    claims = [r.claim for r in report.rows]
    top = max([*claims, *[t.bound.epsilon for r in report.rows for t in r.tests]]) * 1.05
    lo, hi = math.log2(min(claims)) - 0.3, math.log2(max(claims)) + 0.3
    x0, x1, y0, y1 = 60, 560, 40, 400
    image = Image.new("RGB", (820, 460), "white")
    draw = ImageDraw.Draw(image)

    def at(claim: float, value: float) -> tuple[float, float]:
        u = (math.log2(claim) - lo) / (hi - lo)
        return x0 + u * (x1 - x0), y1 - value / top * (y1 - y0)

    draw.rectangle((x0, y0, x1, y1), outline="black")
    draw.text((x0, 10), "privacy audit: empirical ε lower bounds vs the claim", fill="black",
              font=font)  # fmt: skip
    for tick in range(int(top) + 1):
        y = at(1.0, tick)[1]
        draw.line((x0, y, x1, y), fill=(230, 230, 230))
        draw.text((x0 - 25, y - 7), f"{tick}", fill="black", font=font)
    for claim in claims:
        draw.text((at(claim, 0)[0] - 8, y1 + 6), f"{claim:g}", fill="black", font=font)
    draw.text(((x0 + x1) / 2 - 40, y1 + 26), "claimed ε", fill="black", font=font)
    diagonal = [at(c, c) for c in claims]
    for a, b in itertools.pairwise(diagonal):
        for f in range(0, 10, 2):
            p, q = f / 10, (f + 1) / 10
            draw.line((a[0] + p * (b[0] - a[0]), a[1] + p * (b[1] - a[1]),
                       a[0] + q * (b[0] - a[0]), a[1] + q * (b[1] - a[1])),
                      fill="black", width=2)  # fmt: skip
    legend = [("claim (dashed)", (0, 0, 0), True)]
    black = next((t for r in report.rows if (t := r.get(TESTS[2]))), None)
    if black is not None and black.ceiling is not None:
        level = at(1.0, black.ceiling)[1]
        for dash in range(x0, x1, 8):
            draw.line((dash, level, min(dash + 3, x1), level), fill=(150, 150, 150), width=1)
        legend.append((f"black-box ceiling ({black.samples} releases)", (150, 150, 150), True))
    for name, colour in SERIES:
        points = [at(r.claim, t.bound.epsilon) for r in report.rows if (t := r.get(name))]
        if not points:
            continue
        covered = not name.startswith("real")
        draw.line(points, fill=colour, width=2)
        for x, y in points:
            box = (x - 4, y - 4, x + 4, y + 4)
            draw.ellipse(box, fill=colour if covered else None, outline=colour, width=2)
        legend.append((name + ("" if covered else " (not covered)"), colour, covered))
    for i, (label, colour, _) in enumerate(legend):
        y = y0 + 10 + 22 * i
        draw.line((x1 + 15, y + 7, x1 + 35, y + 7), fill=colour, width=3)
        draw.text((x1 + 40, y), label, fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


# -- command line ----------------------------------------------------------------------------


def floats(text: str) -> tuple[float, ...]:
    return tuple(float(t) for t in text.split(",") if t.strip())


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, help="model store (default: packaged)")
    p.add_argument("--epsilons", type=floats, help="default 0.5,1,2,4,8 (--quick 1)")
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--samples", type=int, help="white-box batched outputs per neighbour")
    p.add_argument("--per-release-samples", type=int)
    p.add_argument("--blackbox-samples", type=int, help="releases per neighbour and test")
    p.add_argument("--classifier-steps", type=int)
    p.add_argument("--steps", type=int, help="DDIM steps of each release (default 10)")
    p.add_argument("--seed", type=int, default=9, help="synthfaces seed of the audited face")
    p.add_argument("--repeats", type=int, default=3, help="runs per canary ladder size")
    p.add_argument("--canaries", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="veil audit --quick's sizes, ε = 1")
    p.add_argument("--plot", type=Path, default=PLOT)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def make_plan(args: argparse.Namespace) -> Plan:
    sizes: dict[str, Any] = dict(QUICK) if args.quick else {}
    for name in ("samples", "per_release_samples", "blackbox_samples", "classifier_steps",
                 "steps"):  # fmt: skip
        if getattr(args, name) is not None:
            sizes[name] = getattr(args, name)
    epsilons = args.epsilons or ((1.0,) if args.quick else EPSILONS)
    return Plan(epsilons=epsilons, delta=args.delta, seed=args.seed, store=args.store, **sizes)


async def run(args: argparse.Namespace) -> int:
    plan = make_plan(args)
    began = time.perf_counter()
    async with session(plan) as s:
        report = await audit_with(s, plan, lambda text: print(text, file=sys.stderr, flush=True))
        quick = replace(plan, **QUICK)
        ladders = await canary_ladders(s, quick, args.repeats) if args.canaries else {}
    plot(report, args.plot)
    print(f"command: python -m bench.audit {shlex.join(args.argv)}".rstrip())
    print(f"faces: {report.face}")
    print(f"threads {args.threads}; wall time {time.perf_counter() - began:.1f} s (audit "
          f"{report.seconds:.1f} s), CPU time {time.process_time():.0f} s")  # fmt: skip
    main_table(report)
    if ladders:
        canary_table(ladders, args.repeats)
    print("\ntargets")
    for line in targets(report, ladders):
        print(f"  {line}")
    print(f"\nplot → {args.plot}")
    return 1 if report.flagged else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    # Idle OpenMP workers sleep instead of spinning (as ``veil audit`` does): on a shared
    # 2-core machine a spinning pool made each CNN step 4× slower. Before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(args.threads)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
