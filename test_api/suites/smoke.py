"""Smoke: the model loads, its sizes agree with its config, it computes and it generates.

Cases, in order: ``loads``, ``parameter_shapes``, ``weights_finite``, ``forward_finite``,
``greedy_generation``, ``sampled_generation``, ``output_decodes``, ``serving_path``. If the
model does not load, the rest are skipped.
"""

from __future__ import annotations

import time

import httpx
import torch

from core.api.outbound import allowed_hosts, check_url, peer_headers
from core.engine import LanguageModel
from core.engine.checkpoint import CheckpointError
from core.engine.sampling import SamplingParams
from core.engine.sequence import FINISH_LENGTH, CompletionOutput
from test_api.cases import Case, CaseFailed, CaseSkipped, Details, Plan, SuiteEnv, clip, expect
from test_api.schemas import SmokeRequest
from test_api.suites.numerics import divergence_is_tie, tolerance_for
from test_api.target import ModelTarget, find_target, generate

KIND = "smoke"
REQUEST = SmokeRequest
DESCRIPTION = "The model loads, its sizes agree with its config, it computes and generates."
CASE_NAMES = (
    "loads",
    "parameter_shapes",
    "weights_finite",
    "forward_finite",
    "greedy_generation",
    "sampled_generation",
    "output_decodes",
    "serving_path",
)
FORWARD_SHAPE = (2, 24)  # random bytes for the forward check: (B, T)


def plan(env: SuiteEnv, request: SmokeRequest) -> Plan:
    checks = _SmokeChecks(find_target(env.settings, env.engine, request), request, env)
    cases = [Case(name, getattr(checks, name)) for name in CASE_NAMES]
    return Plan(model=checks.target.name, target=checks.target.describe(), cases=cases)


class _SmokeChecks:
    def __init__(self, target: ModelTarget, request: SmokeRequest, env: SuiteEnv) -> None:
        self.target = target
        self.request = request
        self.env = env
        self.outputs: dict[str, CompletionOutput] = {}

    def _lm(self) -> LanguageModel:
        if self.target.lm is None:
            raise CaseSkipped("the model did not load")
        return self.target.lm

    def loads(self) -> Details:
        started = time.perf_counter()
        try:
            lm = self.target.load()
        except CheckpointError as exc:
            raise CaseFailed(f"the checkpoint does not load: {exc}") from None
        return {
            "load_ms": (time.perf_counter() - started) * 1000,
            "device": str(lm.device),
            "dtype": str(lm.dtype).removeprefix("torch."),
            "size_bytes": self.target.info.size_bytes,
        }

    @torch.no_grad()
    def parameter_shapes(self) -> Details:
        lm = self._lm()
        config = lm.config
        nh, D, N, V = config.n_head, config.n_embd, config.neurons_per_head, config.vocab_size
        expected = {
            "embed.weight": (V, D),
            "encoder": (nh, D, N),
            "encoder_v": (nh, D, N),
            "decoder": (nh * N, D),
            "lm_head": (D, V),
        }
        shapes = {name: tuple(p.shape) for name, p in lm.model.named_parameters()}
        wrong = {k: [shapes.get(k), v] for k, v in expected.items() if shapes.get(k) != v}
        expect(not wrong and set(shapes) == set(expected), "shapes differ", shapes=wrong)
        count = sum(p.numel() for p in lm.model.parameters())
        details = {"parameters": count, "expected": config.parameter_count()}
        expect(count == config.parameter_count(), "parameter count differs", **details)
        state = lm.model.new_state(1).numel()
        expect(state == config.state_numel(), "state size differs", state=state)
        return details | {"state_floats_per_sequence": state}

    @torch.no_grad()
    def weights_finite(self) -> Details:
        lm = self._lm()
        bad = {
            name: int((~torch.isfinite(p)).sum())
            for name, p in lm.model.named_parameters()
            if not torch.isfinite(p).all()
        }
        expect(not bad, "weights hold NaN or inf", non_finite=bad)
        largest = max(float(p.detach().abs().max()) for p in lm.model.parameters())
        return {"max_abs_weight": largest}

    @torch.no_grad()
    def forward_finite(self) -> Details:
        lm = self._lm()
        generator = torch.Generator().manual_seed(self.request.seed)
        idx = torch.randint(0, lm.config.vocab_size, FORWARD_SHAPE, generator=generator)
        logits, _ = lm.model(idx.to(lm.device))
        shape = (*FORWARD_SHAPE, lm.config.vocab_size)
        expect(tuple(logits.shape) == shape, "logits have the wrong shape", shape=logits.shape)
        finite = bool(torch.isfinite(logits).all())
        expect(finite, "logits hold NaN or inf", non_finite=int((~torch.isfinite(logits)).sum()))
        return {"shape": list(shape), "max_abs_logit": float(logits.abs().max())}

    def greedy_generation(self) -> Details:
        return self._generation("greedy", temperature=0.0)

    def sampled_generation(self) -> Details:
        return self._generation("sampled", temperature=1.0)

    def _generation(self, label: str, temperature: float) -> Details:
        lm = self._lm()
        params = SamplingParams(
            max_tokens=self.request.max_tokens, temperature=temperature, seed=self.request.seed
        )
        started = time.perf_counter()
        output = generate(
            self.target,
            lm.encode_prompt(self.request.prompt),
            params,
            self.env.watchdog,
            via_engine=False,
        )
        self.outputs[label] = output
        details = {
            "text": clip(output.text),
            "completion_tokens": output.completion_tokens,
            "finish_reason": output.finish_reason,
            "ms": (time.perf_counter() - started) * 1000,
        }
        expect(output.finish_reason == FINISH_LENGTH, "generation did not complete", **details)
        expect(output.completion_tokens == self.request.max_tokens, "wrong token count", **details)
        expect(all(0 <= t < lm.config.vocab_size for t in output.token_ids), "bad token ids")
        return details

    def output_decodes(self) -> Details:
        lm = self._lm()
        if not self.outputs:
            raise CaseSkipped("no generation completed")
        details: Details = {}
        for label, output in self.outputs.items():
            decoded = lm.tokenizer.decode(output.token_ids)
            expect(
                output.text == decoded,
                f"{label} text differs from its decoded bytes",
                text=clip(output.text),
                decoded=clip(decoded),
            )
            details[f"{label}_replacement_chars"] = output.text.count("\ufffd")
        return details

    def serving_path(self) -> Details:
        lm = self._lm()
        if self.request.serving_url is not None:
            return self._remote_serving_path(lm, self.request.serving_url)
        if not self.target.served:
            raise CaseSkipped(
                "the engine serves this model on another device or dtype; the direct path "
                "was tested"
            )
        reference = self.outputs.get("greedy")
        if reference is None:
            raise CaseSkipped("no greedy generation to compare with")
        params = SamplingParams(max_tokens=self.request.max_tokens, temperature=0.0)
        prompt_ids = lm.encode_prompt(self.request.prompt)
        served = generate(self.target, prompt_ids, params, self.env.watchdog, via_engine=True)
        details: Details = {"text": clip(served.text), "finish_reason": served.finish_reason}
        if served.token_ids != reference.token_ids:
            tie = divergence_is_tie(
                lm, prompt_ids, served.token_ids, reference.token_ids, tolerance_for(lm.dtype)
            )
            expect(tie["tie"], "the scheduler's greedy tokens differ from the model's", **tie)
            details["near_tie"] = tie
        return details

    def _remote_serving_path(self, lm: LanguageModel, base_url: str) -> Details:
        """The greedy completion of the generator this server sends OpenAI requests to."""
        reference = self.outputs.get("greedy")
        if reference is None:
            raise CaseSkipped("no greedy generation to compare with")
        settings = self.env.settings
        url = check_url(base_url, allowed_hosts(settings)) + "/completions"
        body = {
            "model": self.target.name,
            "prompt": self.request.prompt,
            "max_tokens": self.request.max_tokens,
            "temperature": 0.0,
        }
        timeout = max(0.05, min(60.0, self.env.watchdog.remaining()))
        try:
            response = httpx.post(
                url, json=body, headers=peer_headers(settings, url), timeout=timeout
            )
        except httpx.HTTPError as exc:
            raise CaseFailed(f"cannot reach {url}: {type(exc).__name__}: {exc}") from None
        expect(
            response.status_code == 200,
            f"{url} answered {response.status_code}",
            body=clip(response.text),
        )
        choice = response.json()["choices"][0]
        text: str = choice["text"]
        details: Details = {
            "url": url,
            "text": clip(text),
            "finish_reason": choice.get("finish_reason"),
        }
        # The answer is text, not token ids: bytes that are not UTF-8 come back as U+FFFD, so
        # compare texts decoded the same way, and tokens only where the text is exact bytes.
        if text == lm.tokenizer.decode(reference.token_ids):
            return details
        expect(
            "\ufffd" not in text,
            "the generator's greedy text differs from the model's",
            text=clip(text),
            expected=clip(lm.tokenizer.decode(reference.token_ids)),
        )
        prompt_ids = lm.encode_prompt(self.request.prompt)
        served_ids = list(text.encode("utf-8"))
        tie = divergence_is_tie(
            lm, prompt_ids, served_ids, reference.token_ids, tolerance_for(lm.dtype)
        )
        expect(tie["tie"], "the generator's greedy tokens differ from the model's", **tie)
        details["near_tie"] = tie
        return details
