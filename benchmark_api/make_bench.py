"""`make bench`: engine speed of the shipped model, printed as tables with ratios.

Sections: per-token decode latency against context (recurrent vs recompute), decode
throughput against batch size (the PyTorch path and the fused kernel), and prefill speed.
Figures are medians of the decode steps of one run; every ratio compares numbers measured
side by side in this run.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics

import torch
from rich.console import Console
from rich.table import Table

from benchmark_api.engine_bench import measure_decode
from core.engine import kernels, load_model

console = Console()


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


def decode_vs_batch(lm, batches: list[int], context: int, new_tokens: int, rounds: int = 3) -> None:  # type: ignore[no-untyped-def]
    """Both decode kernels at each batch size, in interleaved rounds; medians reported."""
    fused = kernels.fused_applies(lm.model.new_state(1), lm.model.lm_head)
    kernel_names = ["torch", "fused"] if fused else ["torch"]
    steps: dict[tuple[str, int], list[float]] = {}
    saved = os.environ.get(kernels.KERNEL_ENV)
    try:
        for kernel in kernel_names:  # warm-up: the fused kernel compiles or loads on first use
            os.environ[kernels.KERNEL_ENV] = kernel
            measure_decode(lm.model, batch_size=1, context=8, new_tokens=2)
        for _ in range(rounds):
            for kernel in kernel_names:
                os.environ[kernels.KERNEL_ENV] = kernel
                for batch in batches:
                    m = measure_decode(
                        lm.model, batch_size=batch, context=context, new_tokens=new_tokens
                    )
                    steps.setdefault((kernel, batch), []).append(m.tpot_ms)
    finally:
        if saved is None:
            os.environ.pop(kernels.KERNEL_ENV, None)
        else:
            os.environ[kernels.KERNEL_ENV] = saved
    table = Table(
        title=f"Decode throughput vs batch size (context {context}, recurrent; medians of "
        f"{rounds} interleaved rounds; batches of 8+ split over {kernels.threads()} threads)"
    )
    for column in ("kernel", "batch", "ms/step", "tokens/s", "vs batch 1", "vs torch"):
        table.add_column(column, justify="right")
    for kernel in kernel_names:
        for batch in batches:
            ms = statistics.median(steps[(kernel, batch)])
            single = statistics.median(steps[(kernel, batches[0])]) / batches[0]
            torch_ms = statistics.median(steps[("torch", batch)])
            table.add_row(
                kernel,
                str(batch),
                f"{ms:.2f}",
                f"{batch * 1000 / ms:,.0f}",
                f"{single * batch / ms:.2f}x",
                f"{torch_ms / ms:.2f}x",
            )
    console.print(table)


def prefill_speed(lm, lengths: list[int]) -> None:  # type: ignore[no-untyped-def]
    table = Table(title="Prefill speed (batch 1, chunks of 256)")
    for column in ("prompt bytes", "prefill ms", "tokens/s"):
        table.add_column(column, justify="right")
    for length in lengths:
        m = measure_decode(lm.model, batch_size=1, context=length, new_tokens=1)
        table.add_row(str(length), f"{m.ttft_ms:.1f}", f"{m.prefill_tokens_per_s:,.0f}")
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="bdh-shakespeare")
    parser.add_argument("--quick", action="store_true", help="smaller sweep")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    c = lm.config
    console.print(
        f"[bold]{lm.name}[/bold]: {c.parameter_count():,} parameters, state "
        f"{c.state_numel() * 4 / 2**20:.1f} MB/sequence, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, device {lm.device}"
    )
    contexts = [64, 256, 1024] if args.quick else [64, 256, 1024, 4096]
    decode_vs_context(lm, contexts, recompute_max=1024, new_tokens=32)
    decode_vs_batch(lm, [1, 4, 16], context=256, new_tokens=32)
    prefill_speed(lm, [256, 1024] if args.quick else [256, 1024, 4096])


if __name__ == "__main__":
    main()
