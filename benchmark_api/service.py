"""The benchmark jobs: plain functions of (RunContext, request) -> result, no HTTP.

`run_engine_benchmark` sweeps the engine directly (no scheduler in the way), one row per
combination, dtype outermost so each dtype's weights load once. `run_serving_benchmark` loads
an OpenAI-compatible endpoint with the asyncio load generator, one level at a time. Both emit
`metric` events as each row or level finishes, move the run's progress, check for
cancellation between and inside measurements, and save the result so far after every row or
level, so a cancelled or failed run still carries what it measured.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import logging
import time
from collections.abc import Callable

import torch

from benchmark_api.engine_bench import (
    free_memory,
    measure_decode,
    measure_repeats,
    memory_needed,
)
from benchmark_api.environment import describe
from benchmark_api.reports import (
    engine_summary,
    level_metric_events,
    row_metric_events,
    serving_summary,
)
from benchmark_api.results import (
    EngineResult,
    EngineRow,
    Environment,
    ServingLevel,
    ServingResult,
    Spread,
)
from benchmark_api.roofline import (
    ActivationProfile,
    MachineLimits,
    activation_profile,
    decode_traffic,
    parallel_flops,
    prefill_flops,
)
from benchmark_api.schemas import EngineBenchRequest, ServingBenchRequest
from benchmark_api.serving_bench import EndpointError, LevelStopped, LoadSpec, run_levels
from core.api.outbound import peer_headers
from core.config import Settings
from core.engine import kernels
from core.engine.checkpoint import load_checkpoint
from core.engine.model import BDH, BDHConfig
from core.engine.registry import (
    ModelNotFoundError,
    ModelRegistry,
    resolve_device,
    resolve_dtype,
)
from core.engine.training import get_template
from core.errors import NotFound, PlatformError, RunCancelled
from core.peers import ensure_model
from core.runs.context import JobFn, RunContext

logger = logging.getLogger(__name__)

PROGRESS_EVERY_S = 1.0
MEMORY_SHARE = 0.5  # a row may use at most this share of the device's free memory


# Engine -------------------------------------------------------------------------------------


def run_engine_benchmark(context: RunContext, request: EngineBenchRequest) -> EngineResult:
    request.check_settings(context.settings)
    registry = ModelRegistry.of(context.settings, context.engine)
    device = resolve_device(request.device)
    load: Callable[[str], BDH]
    if request.template is not None:
        name, config = request.template, _untrained_config(request.template)
        load = functools.partial(_untrained, request.template, device, seed=request.seed)
    else:
        name = request.model or context.settings.model.default
        config = _config_of(registry, name, context.settings)
        load = functools.partial(_load, registry, name, device)
    context.progress(0.0, "measuring memory bandwidth and matmul peak")
    limits = MachineLimits.measure(device, dram_footprint_bytes=request.bandwidth_mb * 2**20)
    environment = describe(
        device=device,
        dtypes=list(request.dtypes),
        model=name,
        config=config,
        limits=limits,
        untrained=request.template is not None,
    )
    sweep = _EngineSweep(context, request, name, environment, limits)
    sweep.run(load)
    return sweep.result(complete=True)


class _EngineSweep:
    def __init__(
        self,
        context: RunContext,
        request: EngineBenchRequest,
        model: str,
        environment: Environment,
        limits: MachineLimits,
    ) -> None:
        self.context, self.request, self.model = context, request, model
        self.environment, self.limits = environment, limits
        self.rows: list[EngineRow] = []
        self.plan = list(
            itertools.product(
                request.dtypes,
                request.modes,
                request.batch_sizes,
                request.context_lengths,
                request.new_tokens,
            )
        )

    def run(self, load: Callable[[str], BDH]) -> None:
        self.context.save_partial_result(self.result(complete=False))
        for dtype, combos in itertools.groupby(self.plan, key=lambda combo: combo[0]):
            self.context.check_cancelled()
            self.context.progress(self._done(), f"loading {self.model} as {dtype}")
            model = load(dtype)
            profile = activation_profile(model, seed=self.request.seed)
            if self.environment.neuron_density is None:
                self.environment.neuron_density = profile.neuron_density
                self.environment.pair_density = profile.pair_density
                self.environment.product_density = profile.product_density
            if self.request.warmup:
                self._warm_up(model)
            for _, mode, batch, length, new in combos:
                self.context.check_cancelled()
                row = EngineRow(
                    mode=mode,
                    batch_size=batch,
                    context=length,
                    new_tokens=new,
                    dtype=dtype,
                    device=self.environment.device,
                    state_memory_mb=batch * model.config.state_numel() * 4 / 2**20,
                    neuron_density=profile.neuron_density,
                    pair_density=profile.pair_density,
                    product_density=profile.product_density,
                )
                self.context.progress(
                    self._done(), f"row {len(self.rows) + 1}/{len(self.plan)}: {row.label()}"
                )
                self._finish(self._measure(model, row, profile))
            del model

    def _warm_up(self, model: BDH) -> None:
        """One tiny untimed run per mode: the first calls of a process pay for kernel
        selection and thread-pool start-up, which must not land in the first row."""
        for mode in self.request.modes:
            measure_decode(
                model,
                batch_size=1,
                context=8,
                new_tokens=2,
                mode=mode,
                check_cancelled=self.context.check_cancelled,
            )

    def _done(self) -> float:
        return len(self.rows) / max(len(self.plan), 1)

    def _measure(self, model: BDH, row: EngineRow, profile: ActivationProfile) -> EngineRow:
        request = self.request
        if row.mode == "recompute" and row.context + row.new_tokens > request.recompute_max_context:
            row.status = "skipped"
            row.note = (
                f"context + new tokens exceeds recompute_max_context "
                f"({request.recompute_max_context})"
            )
            return row
        need = memory_needed(
            model.config,
            batch_size=row.batch_size,
            context=row.context,
            new_tokens=row.new_tokens,
            mode=row.mode,
            prefill_chunk=request.prefill_chunk,
        )
        free = free_memory(model.lm_head.device)
        if need > MEMORY_SHARE * free:
            # Better a skipped row than an allocation that gets the server OOM-killed.
            row.status = "skipped"
            row.note = f"needs ~{need / 1e9:.1f} GB; only {free / 1e9:.1f} GB is free"
            return row
        try:
            measurements = measure_repeats(
                model,
                batch_size=row.batch_size,
                context=row.context,
                new_tokens=row.new_tokens,
                mode=row.mode,
                repeats=request.repeats,
                warmup=request.warmup,
                seed=request.seed,
                prefill_chunk=request.prefill_chunk,
                check_cancelled=self.context.check_cancelled,
            )
        except (MemoryError, RuntimeError) as exc:  # torch.cuda.OutOfMemoryError included
            if not _out_of_memory(exc):
                raise
            # A row too big for the machine is a finding, not a reason to lose the sweep.
            row.status, row.note = "failed", f"out of memory: {str(exc)[:200]}"
            return row
        row.repeats = len(measurements)
        row.prefill_tokens_per_s = Spread.of([m.prefill_tokens_per_s for m in measurements])
        row.ttft_ms = Spread.of([m.ttft_ms for m in measurements])
        if row.new_tokens:
            row.second_token_ms = Spread.of([m.second_token_ms for m in measurements])
        row.tpot_ms = Spread.of([m.tpot_ms for m in measurements])
        row.decode_tokens_per_s = Spread.of([m.decode_tokens_per_s for m in measurements])
        row.peak_memory_mb = max(m.peak_memory_mb for m in measurements)
        self._roofline(model, row, profile)
        return row

    def _roofline(self, model: BDH, row: EngineRow, profile: ActivationProfile) -> None:
        """Hold the row's decode against memory and its prefill against compute."""
        config, limits = model.config, self.limits
        assert row.ttft_ms is not None and row.decode_tokens_per_s is not None
        batch, context = row.batch_size, row.context
        if row.mode == "recompute":
            flops = parallel_flops(config, batch=batch, context=context)
        else:
            flops = prefill_flops(
                config, batch=batch, context=context, chunk=self.request.prefill_chunk
            )
            traffic = decode_traffic(
                config,
                profile,
                batch=batch,
                weight_element_bytes=model.lm_head.element_size(),
                cache_bytes=limits.cache_bytes,
                skips_zeros=kernels.fused_applies(model.lm_head, model.lm_head),
            )
            bandwidth = limits.bandwidth_for(traffic)
            if traffic.residency == "dram":  # the better of the run's first measure and one now
                bandwidth = max(bandwidth, limits.dram_now())
            achieved = traffic.bytes_per_token * row.decode_tokens_per_s.median
            row.bytes_per_token = traffic.bytes_per_token
            row.residency = traffic.residency
            row.working_set_mb = traffic.working_set_bytes / 2**20
            row.bandwidth_gb_s = bandwidth / 1e9
            row.achieved_gb_s = achieved / 1e9
            row.roofline_fraction = achieved / bandwidth
        row.prefill_gflop_s = flops / (row.ttft_ms.median / 1000) / 1e9
        row.prefill_fraction = row.prefill_gflop_s * 1e9 / limits.matmul_flop_s

    def _finish(self, row: EngineRow) -> None:
        self.rows.append(row)
        step = len(self.rows) - 1
        if row.status == "measured":
            self.context.emit_many(row_metric_events(row, step))
        else:
            self.context.log(
                "warning" if row.status == "failed" else "info",
                f"{row.label()}: {row.status} ({row.note})",
            )
        self.context.save_partial_result(self.result(complete=False))
        self.context.progress(self._done(), f"{len(self.rows)}/{len(self.plan)} rows done")

    def result(self, *, complete: bool) -> EngineResult:
        return EngineResult(
            model=self.model,
            rows=list(self.rows),
            summary=engine_summary(self.rows, planned=len(self.plan), complete=complete),
            environment=self.environment,
        )


def _out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError | torch.cuda.OutOfMemoryError):
        return True
    message = str(exc)
    return "out of memory" in message or "can't allocate memory" in message


def _config_of(registry: ModelRegistry, name: str, settings: Settings) -> BDHConfig:
    ensure_model(registry, name, settings)  # a model this server lacks comes from the generator
    try:
        return registry.info(name).config
    except ModelNotFoundError as exc:
        raise NotFound(str(exc), param="model", code="model_not_found") from None


def _untrained_config(template: str) -> BDHConfig:
    return dataclasses.replace(get_template(template).config, dropout=0.0)


def _untrained(template: str, device: torch.device, dtype: str, *, seed: int) -> BDH:
    """A fresh model of the template, seeded: the same run measures the same weights."""
    torch.manual_seed(seed)
    model = BDH(_untrained_config(template)).eval()
    return model.to(device=device, dtype=resolve_dtype(dtype))


def _load(registry: ModelRegistry, name: str, device: torch.device, dtype: str) -> BDH:
    """The served copy when it matches; else a private copy, dropped after its rows."""
    if device == registry.device and resolve_dtype(dtype) == registry.dtype:
        return registry.load(name).model
    model, _ = load_checkpoint(registry.path_of(name), device=device, dtype=resolve_dtype(dtype))
    return model


# Serving ------------------------------------------------------------------------------------


def run_serving_benchmark(context: RunContext, request: ServingBenchRequest) -> ServingResult:
    settings = context.settings
    request.check_settings(settings)
    base_url = request.target(settings)
    model = request.model or settings.model.default
    spec = LoadSpec(
        completions_url=f"{base_url}/completions",
        model=model,
        max_tokens=request.max_tokens,
        stream=request.stream,
        temperature=request.temperature,
        timeout_s=request.timeout_s,
        headers=tuple(peer_headers(settings, base_url).items()),
    )
    run = _ServingRun(context, request, base_url, model, _serving_environment(context, model))
    context.save_partial_result(run.result(complete=False))
    context.progress(0.0, f"probing {spec.completions_url}")
    try:
        asyncio.run(
            run_levels(
                spec,
                request.levels(),
                num_requests=request.num_requests,
                prompt_bytes=request.prompt_bytes,
                seed=request.seed,
                should_stop=lambda: context.cancelled,
                on_level=run.finish_level,
                on_progress=run.level_progress,
            )
        )
    except LevelStopped:
        context.check_cancelled()
        raise RunCancelled() from None
    except EndpointError as exc:
        raise PlatformError(str(exc), code="endpoint_error", param="base_url") from None
    return run.result(complete=True)


class _ServingRun:
    def __init__(
        self,
        context: RunContext,
        request: ServingBenchRequest,
        base_url: str,
        model: str,
        environment: Environment,
    ) -> None:
        self.context, self.request = context, request
        self.base_url, self.model, self.environment = base_url, model, environment
        self.plan = request.levels()
        self.levels: list[ServingLevel] = []
        self._last_progress = 0.0

    def level_progress(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last_progress < PROGRESS_EVERY_S:
            return
        self._last_progress = now
        index = len(self.levels)
        concurrency, rate = self.plan[index]
        fraction = (index + done / max(total, 1)) / len(self.plan)
        self.context.progress(
            fraction,
            f"level {index + 1}/{len(self.plan)} (concurrency {concurrency}, rate {rate}): "
            f"{done}/{total} requests",
        )

    def finish_level(self, index: int, level: ServingLevel) -> None:
        self.levels.append(level)
        self.context.emit_many(level_metric_events(level, index))
        self.context.save_partial_result(self.result(complete=False))
        self.context.progress(
            len(self.levels) / len(self.plan), f"{len(self.levels)}/{len(self.plan)} levels done"
        )
        self.context.check_cancelled()

    def result(self, *, complete: bool) -> ServingResult:
        return ServingResult(
            model=self.model,
            base_url=self.base_url,
            stream=self.request.stream,
            levels=list(self.levels),
            summary=serving_summary(self.levels, planned=len(self.plan), complete=complete),
            environment=self.environment,
        )


def _serving_environment(context: RunContext, model: str) -> Environment:
    """The serving side as this process knows it: its configured device and dtype."""
    settings = context.settings
    config = None
    registry = ModelRegistry.of(context.settings, context.engine)
    if registry.exists(model):
        config = registry.info(model).config
    return describe(
        device=resolve_device(settings.model.device),
        dtypes=[settings.model.dtype],
        model=model,
        config=config,
    )


JOBS: dict[str, JobFn] = {"engine": run_engine_benchmark, "serving": run_serving_benchmark}
