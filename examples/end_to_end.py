"""The workflow Hatchery exists for: create a model, test it, benchmark it.

    python examples/end_to_end.py --base-url http://127.0.0.1:8000
    python examples/end_to_end.py --template bdh-tiny --steps 500 --text-file my_corpus.txt

1. a generator ``model`` run creates a small model from a template and trains it on a text;
2. the Test component runs the ``smoke`` and ``consistency`` suites on it (at the same time);
3. the Benchmark component sweeps the engine (recurrent vs recompute decoding);
4. a summary table says how it all went. The exit status is 0 when every run succeeded and
   no test case failed.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from pathlib import Path

from rich.console import Console
from rich.table import Table

from clients import ApiClient, HatcheryError, RunResults

console = Console()

# A few lines of public-domain text, enough for a model to learn something from in seconds.
SAMPLE_TEXT = """\
It was the best of times, it was the worst of times, it was the age of wisdom, it was the
age of foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the
season of Light, it was the season of Darkness, it was the spring of hope, it was the winter
of despair, we had everything before us, we had nothing before us, we were all going direct
to Heaven, we were all going direct the other way.
"""


def ints(value: str) -> list[int]:
    return [int(part) for part in value.split(",") if part.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--name", default=None, help="Name of the new model (default: random).")
    parser.add_argument("--template", default="bdh-nano")
    parser.add_argument("--text-file", type=Path, help="Train on this text (default: a sample).")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--lengths", type=ints, default=[1, 16, 64], help="Consistency lengths.")
    parser.add_argument("--contexts", type=ints, default=[64, 256], help="Benchmark contexts.")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=1800.0, help="Per stage, in seconds.")
    parser.add_argument("--poll-interval", type=float, default=0.5, help="Seconds between polls.")
    return parser.parse_args(argv)


def create_model(client: ApiClient, args: argparse.Namespace, name: str) -> RunResults:
    text = args.text_file.read_text(encoding="utf-8") if args.text_file else SAMPLE_TEXT * 8
    console.rule(f"1. creating {name} from {args.template} ({len(text.encode()):,} bytes of text)")
    run = client.generate_model(
        name,
        args.template,
        text=text,
        steps=args.steps,
        batch_size=args.batch_size,
        block_size=args.block_size,
    )
    return client.monitor_generation(run.id, args.poll_interval, args.timeout)


def test_model(client: ApiClient, args: argparse.Namespace, name: str) -> dict[str, RunResults]:
    console.rule(f"2. testing {name}: smoke and consistency")
    runs = {
        "smoke": client.run_test(name, "smoke", max_tokens=8),
        "consistency": client.run_test(name, "consistency", lengths=args.lengths),
    }
    return {
        suite: client.monitor_test(run.id, args.poll_interval, args.timeout)
        for suite, run in runs.items()
    }


def benchmark_model(client: ApiClient, args: argparse.Namespace, name: str) -> RunResults:
    console.rule(f"3. benchmarking {name}: recurrent vs recompute decoding")
    run = client.run_benchmark(
        "engine",
        model=name,
        batch_sizes=[1],
        context_lengths=args.contexts,
        new_tokens=[args.new_tokens],
        modes=["recurrent", "recompute"],
        repeats=1,
        warmup=0,
        bandwidth_mb=16,
    )
    return client.monitor_benchmark(run.id, args.poll_interval, args.timeout)


def summary(created: RunResults, tests: dict[str, RunResults], bench: RunResults) -> Table:
    table = Table(title="end to end")
    table.add_column("stage")
    table.add_column("status")
    table.add_column("figures")
    model = created.result_dict() or {}
    metrics = model.get("metrics") or {}
    table.add_row(
        "create",
        created.run.status.value,
        f"{model.get('parameters', 0):,} params, val {metrics.get('val_bits_per_byte', '-')} "
        f"bits/byte after {metrics.get('steps', 0)} steps",
    )
    for suite, results in tests.items():
        report = results.result_dict() or {}
        counts = ", ".join(f"{report.get(k, 0)} {k}" for k in ("passed", "failed", "errored"))
        table.add_row(f"test {suite}", results.run.status.value, counts)
    rows = (bench.result_dict() or {}).get("rows", [])
    for row in rows:
        decode = (row.get("decode_tokens_per_s") or {}).get("median")
        figure = f"{decode:,.1f} decode tok/s" if decode else row.get("status", "-")
        table.add_row(f"bench {row['mode']} ctx={row['context']}", bench.run.status.value, figure)
    return table


def all_good(created: RunResults, tests: dict[str, RunResults], bench: RunResults) -> bool:
    reports = [results.result_dict() or {} for results in tests.values()]
    cases_ok = all(not r.get("failed") and not r.get("errored") for r in reports)
    runs = [created, bench, *tests.values()]
    return cases_ok and all(results.succeeded for results in runs)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    name = args.name or f"e2e-{uuid.uuid4().hex[:8]}"
    try:
        with ApiClient(args.base_url, api_key=args.api_key, timeout=120) as client:
            created = create_model(client, args, name)
            if not created.succeeded:
                console.print(f"[red]model creation failed:[/red] {created.run.error}")
                return 1
            tests = test_model(client, args, name)
            bench = benchmark_model(client, args, name)
    except HatcheryError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    console.print(summary(created, tests, bench))
    ok = all_good(created, tests, bench)
    console.print(f"model [bold]{name}[/bold]: " + ("[green]all good" if ok else "[red]problems"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
