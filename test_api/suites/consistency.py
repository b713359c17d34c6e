"""Consistency: the fast recurrent path computes what the model computes.

Cases: ``recurrent_vs_parallel[T=…]`` for each requested length (token-by-token
``decode_step`` from an empty state against the official parallel ``forward``),
``prefill_then_decode`` (the serving path: a prompt prefilled in chunks, then decoded),
``chunked_vs_whole_prefill`` (logits and state), ``batched_vs_alone`` (parallel and recurrent,
rows at different positions), ``seed_reproduces`` (directly, and through the scheduler alone
and inside a batch), ``float32_vs_bfloat16`` (drift bound; skipped where the device has no
bfloat16). Inputs are seeded random bytes; tolerances are in ``numerics``.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import torch

from core.engine import BDH, LanguageModel
from core.engine.sampling import SamplingParams
from test_api.cases import Case, CaseSkipped, Details, Plan, SuiteEnv, every, expect
from test_api.schemas import ConsistencyRequest
from test_api.suites.numerics import BFLOAT16_DRIFT_BOUND, Tolerance, compare, tolerance_for
from test_api.target import (
    ModelTarget,
    find_target,
    generate_direct,
    load_or_fail,
    submit_served,
    wait_for_stream,
)

KIND = "consistency"
REQUEST = ConsistencyRequest
DESCRIPTION = "Recurrent vs parallel logits, chunked prefill, batching, seeds, bfloat16 drift."
CASE_NAMES = (
    "recurrent_vs_parallel[T=…]",
    "prefill_then_decode",
    "chunked_vs_whole_prefill",
    "batched_vs_alone",
    "seed_reproduces",
    "float32_vs_bfloat16",
)
CHECK_EVERY = 16  # decode steps between cancel / timeout checks
DRIFT_LENGTH = 64
BATCH_DECODE_STEPS = 4


def plan(env: SuiteEnv, request: ConsistencyRequest) -> Plan:
    target = find_target(env.settings, env.engine, request)
    checks = _ConsistencyChecks(target, load_or_fail(target), request, env)
    cases = [
        Case(f"recurrent_vs_parallel[T={length}]", _bind(checks.recurrent_vs_parallel, length))
        for length in dict.fromkeys(request.lengths)
    ]
    cases += [
        Case(name, getattr(checks, name))
        for name in (
            "prefill_then_decode",
            "chunked_vs_whole_prefill",
            "batched_vs_alone",
            "seed_reproduces",
            "float32_vs_bfloat16",
        )
    ]
    details = target.describe() | {"atol": checks.tolerance.atol, "rtol": checks.tolerance.rtol}
    return Plan(model=target.name, target=details, cases=cases)


def _bind(method: Any, length: int) -> Any:
    return lambda: method(length)


class _ConsistencyChecks:
    def __init__(
        self, target: ModelTarget, lm: LanguageModel, request: ConsistencyRequest, env: SuiteEnv
    ) -> None:
        self.target, self.lm, self.request, self.env = target, lm, request, env
        self.model: BDH = lm.model
        self.tolerance: Tolerance = tolerance_for(lm.dtype, request.atol, request.rtol)
        self.generator = torch.Generator().manual_seed(request.seed)
        self.longest = max(request.lengths)

    def _random_ids(self, batch: int, length: int) -> torch.Tensor:
        ids = torch.randint(0, self.lm.config.vocab_size, (batch, length), generator=self.generator)
        return ids.to(self.lm.device)  # (B, T)

    def _check(
        self, got: torch.Tensor, reference: torch.Tensor, what: str, **extra: Any
    ) -> Details:
        result = compare(got, reference, self.tolerance)
        details = {k: v for k, v in result.items() if k != "ok"} | extra
        expect(result["ok"], f"{what} differ beyond the tolerance", **details)
        return details

    @torch.no_grad()
    def _decode_all(self, idx: torch.Tensor, state: torch.Tensor, start: int) -> torch.Tensor:
        """Feed idx (B, T) one token at a time from position ``start``; logits (B, T, V)."""
        B, T = idx.shape
        logits = []
        for t in every(CHECK_EVERY, range(T), self.env.watchdog.check):
            positions = torch.full((B,), start + t, device=idx.device)
            logits.append(self.model.decode_step(idx[:, t], positions, state))
        return torch.stack(logits, dim=1)

    @torch.no_grad()
    def recurrent_vs_parallel(self, length: int) -> Details:
        idx = self._random_ids(1, length)
        reference, _ = self.model(idx)  # (1, T, V)
        recurrent = self._decode_all(idx, self.model.new_state(1, idx.device), 0)
        return self._check(recurrent, reference, "recurrent and parallel logits", length=length)

    @torch.no_grad()
    def prefill_then_decode(self) -> Details:
        if self.longest < 2:
            raise CaseSkipped("needs a length of at least 2")
        idx = self._random_ids(1, self.longest)
        split = self.longest // 2
        reference, _ = self.model(idx)
        first, state = self.model.prefill(idx[:, :split], chunk_size=self.request.chunk_size)
        rest = self._decode_all(idx[:, split:], state, split)
        served = torch.cat([first.unsqueeze(1), rest], dim=1)  # positions split-1 .. T-1
        return self._check(
            served, reference[:, split - 1 :], "prefill+decode and parallel logits", split=split
        )

    @torch.no_grad()
    def chunked_vs_whole_prefill(self) -> Details:
        length = self.longest
        sizes = sorted({c for c in (self.request.chunk_size, max(1, length // 3)) if c < length})
        if not sizes:
            raise CaseSkipped("the longest length fits in one chunk; give a longer length")
        idx = self._random_ids(1, length)
        whole, whole_state = self.model.prefill(idx, chunk_size=length, all_logits=True)
        details: Details = {"length": length}
        for size in sizes:
            self.env.watchdog.check()
            chunked, state = self.model.prefill(idx, chunk_size=size, all_logits=True)
            details[f"chunk_{size}_logits"] = self._check(chunked, whole, f"chunk {size} logits")
            details[f"chunk_{size}_state"] = self._check(state, whole_state, f"chunk {size} state")
        return details

    @torch.no_grad()
    def batched_vs_alone(self) -> Details:
        B, length = self.request.batch_size, min(self.longest, 64)
        idx = self._random_ids(B, length)
        batched, _ = self.model(idx)  # (B, T, V)
        alone = torch.cat([self.model(idx[i : i + 1])[0] for i in range(B)])
        details = {"parallel": self._check(batched, alone, "batched parallel logits")}
        details["recurrent"] = self._batched_decode(B, length)
        return details

    def _batched_decode(self, B: int, length: int) -> Details:
        """Rows at different positions decoded together vs each alone."""
        lengths = [max(1, length - 5 * i) for i in range(B)]
        prompts = [self._random_ids(1, n) for n in lengths]
        states = [self.model.prefill(p, chunk_size=self.request.chunk_size)[1] for p in prompts]
        tokens = self._random_ids(B, BATCH_DECODE_STEPS)
        positions = torch.tensor(lengths, device=self.lm.device)
        state = torch.cat(states, dim=1)  # (L, B, nh, N, D)
        batched, alone = [], []
        for step in range(BATCH_DECODE_STEPS):
            self.env.watchdog.check()
            batched.append(self.model.decode_step(tokens[:, step], positions + step, state))
            alone.append(
                torch.cat(
                    [
                        self.model.decode_step(
                            tokens[i : i + 1, step], positions[i : i + 1] + step, s
                        )
                        for i, s in enumerate(states)
                    ]
                )
            )
        return self._check(
            torch.stack(batched), torch.stack(alone), "batched recurrent logits", lengths=lengths
        )

    def seed_reproduces(self) -> Details:
        params = SamplingParams(
            max_tokens=self.request.generation_tokens, temperature=1.0, seed=self.request.seed
        )
        prompt = self.lm.encode_prompt("Seeded: ")
        watchdog = self.env.watchdog
        first = generate_direct(self.lm, prompt, params, watchdog).token_ids
        second = generate_direct(self.lm, prompt, params, watchdog).token_ids
        expect(first == second, "the same seed gave different tokens", first=first, second=second)
        details: Details = {"tokens": len(first)}
        if self.target.served:
            details["served"] = self._served_seed(prompt, params, first)
        else:
            details["served"] = "skipped: the engine serves another device or dtype"
        return details

    def _served_seed(self, prompt: list[int], params: SamplingParams, direct: list[int]) -> Details:
        watchdog = self.env.watchdog
        alone = submit_served(self.target, prompt, params, watchdog)
        with alone:
            wait_for_stream(alone, watchdog)
        with contextlib.ExitStack() as streams:  # every stream is aborted if one wait fails
            crowd = [
                streams.enter_context(submit_served(self.target, ids, p, watchdog))
                for ids, p in self._crowd(prompt, params)
            ]
            for stream in crowd:
                wait_for_stream(stream, watchdog)
        alone_ids = alone.outputs()[0].token_ids
        batched_ids = crowd[0].outputs()[0].token_ids
        expect(
            alone_ids == direct,
            "the scheduler's seeded tokens differ from the model's",
            served=alone_ids,
            direct=direct,
        )
        expect(
            batched_ids == alone_ids,
            "seeded tokens change when batched with others",
            batched=batched_ids,
            alone=alone_ids,
        )
        return {"batch": len(crowd), "same_tokens": True}

    def _crowd(
        self, prompt: list[int], params: SamplingParams
    ) -> list[tuple[list[int], SamplingParams]]:
        """The seeded request first, then others with their own prompts and seeds."""
        others = [
            (self.lm.encode_prompt(f"Other {i}: "), params.model_copy(update={"seed": 1000 + i}))
            for i in range(1, self.request.batch_size)
        ]
        return [(prompt, params), *others]

    @torch.no_grad()
    def float32_vs_bfloat16(self) -> Details:
        device = self.lm.device
        if not _bfloat16_supported(device):
            raise CaseSkipped(f"{device} cannot compute in bfloat16")
        reference_model = self._copy_as(torch.float32)
        low_model = self._copy_as(torch.bfloat16)
        idx = self._random_ids(1, min(self.longest, DRIFT_LENGTH))
        reference = reference_model(idx)[0].float()  # (1, T, V)
        low = low_model(idx)[0].float()
        bound = self.request.bfloat16_bound or BFLOAT16_DRIFT_BOUND
        scale = float(reference.abs().max())
        finite = bool(torch.isfinite(low).all() and torch.isfinite(reference).all())
        drift = float((low - reference).abs().max()) / max(scale, 1e-12)
        log_p, log_q = reference.log_softmax(-1), low.log_softmax(-1)
        details = {
            "relative_drift": drift,
            "bound": bound,
            "mean_kl_nats": float((log_p.exp() * (log_p - log_q)).sum(-1).mean()),
            "top1_agreement": float((low.argmax(-1) == reference.argmax(-1)).float().mean()),
        }
        expect(finite and drift <= bound, "bfloat16 logits drift beyond the bound", **details)
        return details

    def _copy_as(self, dtype: torch.dtype) -> BDH:
        if self.lm.dtype == dtype:
            return self.model
        return copy.deepcopy(self.model).to(dtype=dtype)


def _bfloat16_supported(device: torch.device) -> bool:
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return False
    try:
        probe = torch.ones((2, 2), dtype=torch.bfloat16, device=device)
        return bool(torch.isfinite((probe @ probe).float()).all())
    except (RuntimeError, TypeError):
        return False
