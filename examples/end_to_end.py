"""The workflow Hatchery exists for: create a model, test it, and if it passes, benchmark it.

    python examples/end_to_end.py --base-url http://127.0.0.1:8000            # one server
    python examples/end_to_end.py --generator-url http://127.0.0.1:8001 \
        --test-url http://127.0.0.1:8002 --benchmark-url http://127.0.0.1:8003 # three servers
    python examples/end_to_end.py --template bdh-tiny --steps 500 --text-file my_corpus.txt

1. the generator's ``model`` run creates a small model from a template, trained on a text;
2. the test server runs the ``smoke`` and ``consistency`` suites on it (at the same time);
3. only if both end with ``outcome == "passed"``, the benchmark server loads the generator's
   OpenAI endpoint with the model (a ``serving`` run) and the model's latency and throughput
   are printed. The exit status is 0 when every run succeeded and every test passed.

Each URL defaults to ``--base-url``; split servers find each other through ``services.*``
(``hatchery serve components`` wires them), so nothing else needs saying here.
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
    for component in ("generator", "test", "benchmark"):
        parser.add_argument(f"--{component}-url", help="Default: --base-url.")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--name", default=None, help="Name of the new model (default: random).")
    parser.add_argument("--template", default="bdh-nano")
    parser.add_argument("--text-file", type=Path, help="Train on this text (default: a sample).")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--lengths", type=ints, default=[1, 16, 64], help="Consistency lengths.")
    parser.add_argument("--concurrency", type=ints, default=[1, 4], help="Serving levels.")
    parser.add_argument("--requests", type=int, default=16, help="Requests per serving level.")
    parser.add_argument("--prompt-bytes", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=1800.0, help="Per stage, in seconds.")
    parser.add_argument("--poll-interval", type=float, default=0.5, help="Seconds between polls.")
    args = parser.parse_args(argv)
    for component in ("generator", "test", "benchmark"):
        key = f"{component}_url"
        setattr(args, key, getattr(args, key) or args.base_url)
    return args


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
    console.rule(f"3. benchmarking {name}: serving load at concurrency {args.concurrency}")
    run = client.run_benchmark(
        "serving",
        model=name,  # against the generator's /v1 (the benchmark server's default target)
        concurrency=args.concurrency,
        num_requests=args.requests,
        prompt_bytes=args.prompt_bytes,
        max_tokens=args.new_tokens,
    )
    return client.monitor_benchmark(run.id, args.poll_interval, args.timeout)


def summary(created: RunResults, tests: dict[str, RunResults], bench: RunResults | None) -> Table:
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
        table.add_row(f"test {suite}", f"{results.run.status.value}, {results.outcome}", counts)
    if bench is None:
        table.add_row("benchmark", "skipped", "a test did not pass")
        return table
    for level in (bench.result_dict() or {}).get("levels", []):
        table.add_row(
            f"serve c={level['concurrency']}",
            bench.run.status.value,
            f"latency: TTFT p50 {_ms(level['ttft_ms'])}, E2E p50 {_ms(level['e2e_ms'])}; "
            f"throughput: {level['output_tokens_per_s']:,.1f} tok/s, "
            f"{level['request_throughput']:,.2f} req/s",
        )
    return table


def _ms(stats: dict[str, float | None]) -> str:
    p50 = stats.get("p50")
    return f"{p50:,.1f} ms" if p50 is not None else "-"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    name = args.name or f"e2e-{uuid.uuid4().hex[:8]}"
    console.print(
        f"generator {args.generator_url}, test {args.test_url}, benchmark {args.benchmark_url}"
    )
    bench: RunResults | None = None
    try:
        with ApiClient(args.generator_url, api_key=args.api_key, timeout=120) as generator:
            created = create_model(generator, args, name)
        if not created.succeeded:
            console.print(f"[red]model creation failed:[/red] {created.run.error}")
            return 1
        with ApiClient(args.test_url, api_key=args.api_key, timeout=120) as tester:
            tests = test_model(tester, args, name)
        passed = all(results.outcome == "passed" for results in tests.values())
        if passed:
            with ApiClient(args.benchmark_url, api_key=args.api_key, timeout=120) as benchmarker:
                bench = benchmark_model(benchmarker, args, name)
    except HatcheryError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    console.print(summary(created, tests, bench))
    ok = passed and bench is not None and bench.succeeded
    console.print(f"model [bold]{name}[/bold]: " + ("[green]all good" if ok else "[red]problems"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
