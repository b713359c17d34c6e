"""The Benchmark component: engine and serving benchmarks as runs (see benchmark_api.app)."""
