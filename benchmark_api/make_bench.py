"""`make bench`: engine speed of the shipped model and of untrained template models.

First the machine's limits, measured now: DRAM copy and read bandwidth, the last-level cache,
a float32 matmul peak. Then per model: per-token decode latency against context (recurrent vs
recompute, the trained model only), decode throughput against batch size (the PyTorch path and
the fused kernel) with each row's bytes from the measured activation density, labelled cache-
or DRAM-resident and held against that limit, and time to first token of the recurrent prefill
against one parallel forward (the last chunk's state write deferred past the first token, its
cost shown in the second token's latency). Figures are medians of interleaved rounds; every
ratio compares numbers measured side by side in this run.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import statistics
import sys
import time

import torch
from rich.console import Console
from rich.table import Table

from benchmark_api.engine_bench import measure_decode
from benchmark_api.roofline import (
    MachineLimits,
    StepTraffic,
    activation_profile,
    decode_traffic,
    prefill_flops,
)
from core.engine import BDH, kernels, load_model
from core.engine.language_model import LanguageModel
from core.engine.training import get_template

# Piped to a file, a table is laid out 120 wide (rich's default of 80 cuts figures short).
console = Console() if sys.stdout.isatty() else Console(width=120)


def decode_vs_context(lm, contexts: list[int], recompute_max: int, new_tokens: int) -> None:  # type: ignore[no-untyped-def]
    """Recurrent contexts are measured in interleaved rounds (median over rounds), so that a
    burst of load on this shared machine cannot land on one context only."""
    rounds = 5
    table = Table(title=f"Per-token decode latency vs context ({lm.name}, batch 1)")
    for column in ("context", "recurrent ms/token", "recompute ms/token", "recompute / recurrent"):
        table.add_column(column, justify="right")
    samples: dict[int, list[float]] = {context: [] for context in contexts}
    for _ in range(rounds):
        for context in contexts:
            m = measure_decode(lm.model, batch_size=1, context=context, new_tokens=new_tokens)
            samples[context].append(m.tpot_ms)
    recurrent = {context: statistics.median(values) for context, values in samples.items()}
    for context in contexts:
        slow = None
        if context <= recompute_max:
            slow = measure_decode(
                lm.model, batch_size=1, context=context, new_tokens=3, mode="recompute"
            ).tpot_ms
        table.add_row(
            str(context),
            f"{recurrent[context]:.3f}",
            f"{slow:.1f}" if slow else "-",
            f"{slow / recurrent[context]:,.0f}x" if slow else "-",
        )
    console.print(table)
    first, last = contexts[0], contexts[-1]
    console.print(
        f"recurrent decode at context {last} is {recurrent[last] / recurrent[first]:.2f}x the "
        f"per-token time at context {first} (medians of {rounds} interleaved rounds)"
    )


def decode_vs_batch(  # type: ignore[no-untyped-def]
    lm, batches: list[int], context: int, new_tokens: int, limits: MachineLimits, rounds: int = 3
) -> None:
    """Both decode kernels at each batch size, in interleaved rounds; medians reported, each
    against the roofline of its residency (the measured activation density sets the bytes).

    A DRAM row's fraction is the median over rounds of each measurement's bandwidth against
    the better of two DRAM limits, measured just before and just after it (the `limit`
    column: their median): what a shared machine leaves this process drifts by tens of
    percent within a minute, and the better of the two keeps a quiet moment's measure from
    being held against a busy one's limit."""
    fused = kernels.fused_applies(lm.model.lm_head, lm.model.lm_head)
    kernel_names = ["torch", "fused"] if fused else ["torch"]
    profile = activation_profile(lm.model)

    def traffic_of(kernel: str, batch: int) -> StepTraffic:
        return decode_traffic(
            lm.config,
            profile,
            batch=batch,
            weight_element_bytes=lm.model.lm_head.element_size(),
            cache_bytes=limits.cache_bytes,
            skips_zeros=kernel == "fused",
        )

    steps: dict[tuple[str, int], list[float]] = {}
    dram: dict[tuple[str, int], list[float]] = {}  # the limit beside each DRAM measure
    saved = os.environ.get(kernels.KERNEL_ENV)
    try:
        for kernel in kernel_names:  # warm-up: the fused kernel compiles or loads on first use
            os.environ[kernels.KERNEL_ENV] = kernel
            measure_decode(lm.model, batch_size=1, context=8, new_tokens=2)
        latest: float | None = None  # the limit measured last, when nothing ran since
        for _ in range(rounds):
            for kernel in kernel_names:
                os.environ[kernels.KERNEL_ENV] = kernel
                for batch in batches:
                    in_dram = traffic_of(kernel, batch).residency == "dram"
                    before = (limits.dram_now() if latest is None else latest) if in_dram else 0.0
                    m = measure_decode(
                        lm.model, batch_size=batch, context=context, new_tokens=new_tokens
                    )
                    steps.setdefault((kernel, batch), []).append(m.tpot_ms)
                    latest = limits.dram_now() if in_dram else None
                    if latest is not None:
                        dram.setdefault((kernel, batch), []).append(max(before, latest))
    finally:
        if saved is None:
            os.environ.pop(kernels.KERNEL_ENV, None)
        else:
            os.environ[kernels.KERNEL_ENV] = saved
    table = Table(
        title=f"Decode throughput vs batch size ({lm.name}, context {context}; medians of "
        f"{rounds} interleaved rounds; {kernels.threads()} decode threads)"
    )
    columns = ["kernel", "batch", "ms/step", "tokens/s", "vs torch", "resident", "GB/s"]
    columns += ["limit", "roofline"]
    for column in columns:
        table.add_column(column, justify="right")
    for kernel in kernel_names:
        for batch in batches:
            ms = statistics.median(steps[(kernel, batch)])
            torch_ms = statistics.median(steps[("torch", batch)])
            traffic = traffic_of(kernel, batch)
            moved = traffic.bytes_per_token * batch * 1000
            achieved = moved / ms
            if traffic.residency == "dram":  # each measure against its own limit, then the median
                limits_now = dram[(kernel, batch)]
                limit = statistics.median(limits_now)
                fraction = statistics.median(
                    moved / t / d for t, d in zip(steps[(kernel, batch)], limits_now, strict=True)
                )
            else:
                limit = limits.bandwidth_for(traffic)
                fraction = achieved / limit
            table.add_row(
                kernel,
                str(batch),
                f"{ms:.2f}",
                f"{batch * 1000 / ms:,.0f}",
                f"{torch_ms / ms:.2f}x",
                traffic.residency,
                f"{achieved / 1e9:.1f}",
                f"{limit / 1e9:.1f}",
                f"{fraction:.0%}",
            )
    console.print(table)
    console.print(
        f"activation density: {profile.neuron_density:.0%} of neurons, "
        f"{profile.pair_density:.0%} of RoPE pairs (state rows touched), "
        f"{profile.product_density:.0%} of decoder rows (trained models are sparser)"
    )


def prefill_vs_parallel(  # type: ignore[no-untyped-def]
    lm, lengths: list[int], limits: MachineLimits, rounds: int = 3, long_rounds: int | None = None
) -> None:
    """Time to first token: the recurrent prefill (as the scheduler runs it: its last chunk's
    state write deferred past the first token) against one parallel forward of the prompt
    (what a model without a state would run), in interleaved rounds. The deferred write is
    not hidden: its time and the second token's latency (write + first decode step) are
    shown beside, and prefill throughput is held against the measured matmul peak.
    Prompts beyond one chunk (256 bytes) get `long_rounds` rounds (default `rounds`)."""
    long_rounds = rounds if long_rounds is None else long_rounds
    counts = f"{rounds}" if long_rounds == rounds else f"{rounds} ({long_rounds} beyond 256 B)"
    table = Table(
        title=f"Time to first token: recurrent prefill vs parallel forward ({lm.name}; "
        f"medians of {counts} interleaved rounds)"
    )
    for column in (
        "prompt bytes",
        "prefill TTFT ms",
        "parallel ms",
        "ratio",
        "state write ms",
        "2nd token ms",
        "prefill tok/s",
        "prefill GFLOP/s",
        "of matmul peak",
    ):
        table.add_column(column, justify="right")
    warm = torch.randint(0, lm.config.vocab_size, (1, 8))
    scratch = lm.model.new_state(1)  # a serving lane's prefill buffer: kept, paged in
    slot = lm.model.new_state(1)  # and a slot of its pool
    measure_decode(lm.model, batch_size=1, context=8, new_tokens=1)  # first calls: untimed
    with torch.no_grad():
        lm.model(warm)
    for length in lengths:
        prefill: list[float] = []
        writes: list[float] = []
        seconds: list[float] = []
        parallel: list[float] = []
        idx = torch.randint(0, lm.config.vocab_size, (1, length))
        for _ in range(rounds if length <= 256 else long_rounds):
            m = measure_decode(
                lm.model, batch_size=1, context=length, new_tokens=1, scratch=scratch, slot=slot
            )
            prefill.append(m.ttft_ms)
            writes.append(m.state_write_s * 1000)
            seconds.append(m.second_token_ms)
            started = time.perf_counter()
            with torch.no_grad():
                lm.model(idx)
            parallel.append((time.perf_counter() - started) * 1000)
        p, q = statistics.median(prefill), statistics.median(parallel)
        flops = prefill_flops(lm.config, batch=1, context=length, chunk=256) / (p / 1000)
        table.add_row(
            str(length), f"{p:.1f}", f"{q:.1f}", f"{p / q:.2f}x",
            f"{statistics.median(writes):.1f}", f"{statistics.median(seconds):.1f}",
            f"{length * 1000 / p:,.0f}", f"{flops / 1e9:.1f}",
            f"{flops / limits.matmul_flop_s:.0%}",
        )  # fmt: skip
    console.print(table)


def untrained(template: str) -> LanguageModel:
    """An untrained model of a template: its speed sizes hardware before any training."""
    torch.manual_seed(0)
    model = BDH(dataclasses.replace(get_template(template).config, dropout=0.0))
    return LanguageModel(f"{template} (untrained)", model.eval())


TABLES = ("context", "batch", "prefill")


def section(  # one model
    lm: LanguageModel,
    limits: MachineLimits,
    *,
    quick: bool,
    tables: tuple[str, ...] = TABLES,
    lengths: list[int] | None = None,
) -> None:
    c = lm.config
    console.rule(f"[bold]{lm.name}")
    console.print(
        f"{c.parameter_count():,} parameters, state {c.state_numel() * 4 / 2**20:.1f} "
        f"MB/sequence, torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
        f"device {lm.device}"
    )
    large = c.state_numel() * 4 > 64 * 2**20
    if lm.metadata and "context" in tables:  # the trained model: decode cost vs context
        contexts = [64, 256, 1024] if quick else [64, 256, 1024, 4096]
        decode_vs_context(lm, contexts, recompute_max=1024, new_tokens=32)
    if "batch" in tables:
        batches = [1, 4, 8] if large else [1, 4, 16]
        decode_vs_batch(lm, batches, context=256, new_tokens=4 if large else 32, limits=limits)
    if "prefill" in tables:
        if lengths is None:
            lengths = [64, 256, 1024] if large or quick else [64, 256, 1024, 4096]
        prefill_vs_parallel(lm, lengths, limits, rounds=3, long_rounds=1 if large else 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="bdh-shakespeare", help="'' for none")
    parser.add_argument(
        "--templates",
        nargs="*",
        default=["bdh-small", "bdh-official"],
        help="also benchmark untrained models of these templates",
    )
    parser.add_argument("--quick", action="store_true", help="smaller sweep")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--tables", nargs="+", choices=TABLES, default=list(TABLES), help="which tables to run"
    )
    parser.add_argument(
        "--lengths", type=int, nargs="+", default=None, help="prompt bytes of the prefill table"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    limits = MachineLimits.measure(torch.device("cpu"), dram_footprint_bytes=512 * 2**20)
    console.print(
        f"machine: DRAM copy {limits.dram_copy_bytes_s / 1e9:.1f} GB/s, read "
        f"{limits.dram_read_bytes_s / 1e9:.1f} GB/s, in-place update "
        f"{limits.dram_update_bytes_s / 1e9:.1f} GB/s ({limits.threads} threads), last-level cache "
        f"{limits.cache_bytes / 2**20:.0f} MB, float32 matmul peak "
        f"{limits.matmul_flop_s / 1e9:.0f} GFLOP/s (measured now; fastest of several)"
    )
    options = {"quick": args.quick, "tables": tuple(args.tables), "lengths": args.lengths}
    if args.model:
        section(load_model(args.model), limits, **options)
    for template in args.templates:
        section(untrained(template), limits, **options)


if __name__ == "__main__":
    main()
