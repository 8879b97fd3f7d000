"""facediff's benchmark: training, memory, data loading and sampling on the current device.

    PYTHONPATH=. python -m benchmarks.bench            # everything -> outputs/bench/bench.json
    PYTHONPATH=. python -m benchmarks.bench --only train --models unet_attn,diffusers_unet2d \
        --precisions bf16 --variants none --reps 3                        # a quick subset

Prints tables and writes JSON (see BENCHMARKS.md for what each number means). Every ratio comes
from cases interleaved in this one process (warm-up, then A, B, C, A, B, C, ...; median and
min-max spread). `diffusers_unet2d` needs the optional `bench` extra (`pip install -e .[bench]`)
and is skipped with a note without it.

OpenMP threads that busy-wait collapse when other processes share the cores (measured: a
unet_tiny step took 9 s instead of 0.07 s with 2 threads on a loaded 2-core machine), so this
script sets OMP_WAIT_POLICY=PASSIVE before torch loads, unless it is already set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parents[1]
SECTIONS = ("peak", "train", "memory", "data", "sample")
VARIANTS = ("channels_last", "grad_ckpt", "compile", "compile_graphs")
DEFAULT_VARIANTS = VARIANTS[:3]  # compile_graphs (CUDA graphs) only pays on a GPU: ask for it


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="facediff benchmark", allow_abbrev=False)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"sections, from {SECTIONS}")
    p.add_argument("--models", default="original,unet_attn,unet,unet_tiny,diffusers_unet2d")
    p.add_argument("--precisions", default="all", help="fp32,bf16,fp16 or all the device offers")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"{VARIANTS} or none")
    p.add_argument(
        "--variant-models", default="unet_attn,diffusers_unet2d",
        help="models the variants run for (the ratios take each network's faster layout)",
    )  # fmt: skip
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--mem-model", default="unet_attn")
    p.add_argument("--mem-batch", type=int, default=32)
    p.add_argument("--mem-precision", default="fp32")
    p.add_argument("--mem-inprocess", action="store_true", help="no child process (quicker)")
    p.add_argument("--data-per-class", type=int, default=200, help="JPEGs per class (3 classes)")
    p.add_argument("--data-workers", default="0,2")
    p.add_argument("--sample-models", default="unet_attn")
    p.add_argument("--sample-batch", type=int, default=4)
    p.add_argument("--sample-steps", type=int, default=None, help="time fewer steps and scale")
    p.add_argument(
        "--peak-n", type=int, default=None,
        help="matmul side for the peak (default 2048 on a CPU, 8192 on a GPU: 2048 is "
        "launch-bound there and read 346 of 748 TFLOP/s on an H100)",
    )  # fmt: skip
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--json", default="outputs/bench/bench.json", help="output file")
    return p.parse_args(argv)


def csv(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip() and s.strip() != "none"]


def fmt(stat: dict[str, float], digits: int = 2) -> str:
    return f"{stat['median']:.{digits}f} ({stat['min']:.{digits}f}-{stat['max']:.{digits}f})"


def train_cases(args: argparse.Namespace, precisions: list[str]) -> list[Any]:
    from benchmarks.bench_train import TrainCase
    from benchmarks.models import PEER, have_diffusers

    models = csv(args.models)
    if PEER in models and not have_diffusers():
        print(f"note: {PEER} skipped: diffusers is not installed (pip install -e .[bench])")
        models.remove(PEER)
    cases = [TrainCase(m, p) for m in models for p in precisions]
    for m in csv(args.variant_models):
        for p in precisions:
            for v in csv(args.variants):
                if v not in VARIANTS:
                    raise SystemExit(f"unknown variant {v!r}; choose from {VARIANTS}")
                cases.append(TrainCase(m, p, **{v: True}))
    return cases


def fastest_layout(train: dict[str, dict[str, Any]], model: str, precision: str) -> str | None:
    """The key of `model`'s faster layout at `precision`: the plain (contiguous) case or its
    channels_last variant (`/cl`), whichever ran and measured more images/s."""
    keys = (f"{model}/{precision}", f"{model}/{precision}/cl")
    keys = tuple(k for k in keys if "img_per_s" in train.get(k, {}))
    return max(keys, key=lambda k: train[k]["img_per_s"]["median"], default=None)


def compared(
    train: dict[str, dict[str, Any]], precisions: list[str], field: str
) -> Iterator[tuple[str, Any, Any]]:
    """(name, unet_attn's `field`, the other's) for the peer, `original` and `unet`, per
    precision, each network in its faster layout (contiguous, or channels_last where that
    variant ran and measured faster; the name says `/cl`)."""
    for p in precisions:
        ours = fastest_layout(train, "unet_attn", p)
        for other in ("diffusers_unet2d", "original", "unet"):
            theirs = fastest_layout(train, other, p)
            if ours and theirs:
                name = f"{ours.replace(f'/{p}', '')}/{theirs.replace(f'/{p}', '')} {p}"
                yield name, train[ours][field], train[theirs][field]


def ratios(train: dict[str, dict[str, Any]], precisions: list[str]) -> dict[str, float]:
    """unet_attn's rate over the peer's, the original's and unet's, per precision, each in its
    faster layout."""
    return {
        key: ours["median"] / theirs["median"]
        for key, ours, theirs in compared(train, precisions, "img_per_s")
    }


def paired_ratios(train: dict[str, dict[str, Any]], precisions: list[str]) -> dict[str, Any]:
    """The same ratios round by round (each round times every case once, back to back), their
    median and spread: a drift of the host's speed over the run moves both cases of a round
    alike, so the spread of these says how far one run's ratio can be trusted."""
    from benchmarks.common import summarize

    return {
        key: summarize([t / o for o, t in zip(ours, theirs, strict=True)])
        for key, ours, theirs in compared(train, precisions, "step_seconds")
    }


def print_train(train: dict[str, dict[str, Any]]) -> None:
    print("\n## Training (full step), img/s median (min-max)")
    print("| case | size | params | img/s | ms/step | GFLOP/img | % of peak | EMA share |")
    print("|---|---|---|---|---|---|---|---|")
    for key, r in train.items():
        if "error" in r:
            print(f"| {key} | - | - | error: {r['error'][:80]} | | | | |")
            continue
        share = "-" if r["peak_share"] is None else f"{100 * r['peak_share']:.1f}"
        bad = r.get("nonfinite_steps", 0)
        if bad:  # the rate of a step whose gradients are NaN is no training rate
            key = f"{key} (NaN/inf gradients in {bad} of {r['steps']} steps)"
        print(
            f"| {key} | {r['size']} | {r['params'] / 1e6:.1f}M | {fmt(r['img_per_s'])} | "
            f"{r['ms_per_step']['median']:.0f} | {r['gflop_per_img']:.1f} | {share} | "
            f"{100 * r['ema_share']['median']:.2f}% |"
        )


def print_rest(result: dict[str, Any]) -> None:
    if "peak" in result:
        print(f"\n## Matmul peak ({result['args']['peak_n']}^3), GFLOP/s")
        for p, r in result["peak"].items():
            print(f"- {p}: {r['gflops']:.0f}")
    if result.get("ratios"):
        print("\n## Ratios (interleaved, median over median; per round: median, min-max)")
        paired = result.get("paired_ratios", {})
        for k, v in result["ratios"].items():
            r = paired.get(k)
            rounds = f"; per round {r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f}x)" if r else ""
            print(f"- {k}: {v:.2f}x{rounds}")
    if "memory" in result:
        m = result["memory"]
        print(f"\n## Peak memory of a step ({m['model']}, {m['size']}px, batch {m['batch']})")
        for label in ("plain", "grad_ckpt"):
            r = m.get(label, {})
            print(f"- {label}: {r.get('peak_mib', float('nan')):.0f} MiB ({r.get('method', r)})")
        if "error" in m:
            print(f"- error: {m['error']}")
        if m.get("reduction") is not None:
            print(f"- grad checkpointing cuts it by {100 * m['reduction']:.0f}%")
    if "data" in result:
        d = result["data"]
        print(f"\n## Data loading ({d['files']} 200x200 JPEGs -> {d['size']}px, augmented)")
        print("| case | img/s | setup s |\n|---|---|---|")
        for key, r in d["cases"].items():
            print(f"| {key} | {fmt(r['img_per_s'], 0)} | {r['setup_s']:.1f} |")
    if "sample" in result:
        print("\n## Sampling with guidance 3 (2B network batch), img/s")
        print("| case | steps | img/s | ms/step |\n|---|---|---|---|")
        for key, r in result["sample"].items():
            if "error" in r:
                print(f"| {key} | error: {r['error'][:80]} | | |")
                continue
            steps = f"{r['usual_steps']}" + (f" (timed {r['measured_steps']})" * r["extrapolated"])
            print(
                f"| {key} | {steps} | {fmt(r['img_per_s'], 3)} | {r['ms_per_step']['median']:.0f} |"
            )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch loads OpenMP
    sys.path.insert(0, str(ROOT))
    import torch

    from benchmarks import bench_data, bench_memory, bench_sample, bench_train, common

    if args.threads:
        torch.set_num_threads(args.threads)
    device = common.pick_device(args.device)
    offered = ["fp32", *common.mixed_precisions(device)]
    precisions = offered if args.precisions == "all" else csv(args.precisions)
    unknown = [p for p in precisions if p not in ("fp32", *common.DTYPES)]
    if unknown:  # e.g. "auto": every row names the precision it measured
        raise SystemExit(f"--precisions: unknown {unknown}; name them (fp32,bf16,fp16) or 'all'.")
    sections = csv(args.only)
    info = common.device_info(device)
    info["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY")
    result: dict[str, Any] = {"machine": info, "args": vars(args), "precisions": precisions}
    print(f"# facediff bench on {common.describe(info)}")
    if args.peak_n is None:
        args.peak_n = 2048 if device.type == "cpu" else 8192
    peaks = (
        common.matmul_peak(device, precisions, args.peak_n)
        if {"peak", "train"} & set(sections)
        else {}
    )
    if "peak" in sections:
        result["peak"] = peaks
    if "train" in sections:
        cases = train_cases(args, precisions)
        result["train"] = bench_train.run_training(
            cases, args.size, args.batch, args.reps, args.warmup, device, peaks
        )
        result["ratios"] = ratios(result["train"], precisions)
        result["paired_ratios"] = paired_ratios(result["train"], precisions)
        print_train(result["train"])
    if "memory" in sections:
        # a child process only on a CPU, where RSS keeps the heap's history; CUDA's peak counter
        # is exact in-process (on the H100 of run 15 the child's section did not end in 2.5 min)
        isolate = not args.mem_inprocess and device.type == "cpu"
        result["memory"] = bench_memory.run_memory(
            args.mem_model, args.size, args.mem_batch, args.mem_precision, isolate
        )
    if "data" in sections:
        workers = tuple(int(w) for w in csv(args.data_workers))
        result["data"] = bench_data.run_data(args.size, 64, args.data_per_class, workers, args.reps)
    if "sample" in sections:
        result["sample"] = bench_sample.run_sampling(
            csv(args.sample_models), args.size, args.sample_batch, args.reps, args.warmup,
            device, precisions=tuple(precisions), measured_steps=args.sample_steps,
        )  # fmt: skip
    print_rest(result)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(f"\nwrote {args.json}")
    return result


if __name__ == "__main__":
    main()
