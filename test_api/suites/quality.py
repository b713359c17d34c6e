"""Quality: bits per byte on held-out text, against a threshold and a unigram baseline, and the
sanity of sampled text.

Held-out text is the request's ``text``, else the validation split recorded in the model's
metadata (``evaluation.validation_split = {corpus, start, end}``, reloaded from the data
directory). Bits per byte are measured with the parallel form on evenly spaced,
non-overlapping windows of the training block size — the way training measured them — up to
``max_bytes`` predicted bytes. The baseline is the unigram entropy of those same predicted
bytes: a model that does not beat it has learnt less than byte frequencies.

Cases: ``bits_per_byte``, ``bits_per_byte_threshold``, ``beats_unigram_baseline``,
``sample_valid_utf8``, ``sample_repetition``.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from core.config import Settings
from core.engine import LanguageModel
from core.engine.corpus import CorpusError, load_corpus
from core.engine.sampling import SamplingParams
from core.engine.sequence import CompletionOutput
from test_api.cases import Case, CaseSkipped, Details, Plan, SuiteEnv, clip, expect
from test_api.schemas import QualityRequest
from test_api.target import ModelTarget, find_target, generate, load_or_fail

KIND = "quality"
REQUEST = QualityRequest
DESCRIPTION = "Held-out bits per byte vs a threshold and a unigram baseline; sample sanity."
CASE_NAMES = (
    "bits_per_byte",
    "bits_per_byte_threshold",
    "beats_unigram_baseline",
    "sample_valid_utf8",
    "sample_repetition",
)
DEFAULT_BLOCK_SIZE = 256
SAMPLE_PROMPT_BYTES = 32
LN2 = math.log(2.0)


@dataclass
class HeldOut:
    data: bytes | None
    source: str  # where it came from, or why there is none


def plan(env: SuiteEnv, request: QualityRequest) -> Plan:
    target = find_target(env.settings, env.engine, request)
    lm = load_or_fail(target)
    held_out = held_out_text(env.settings, target.info.metadata, request)
    checks = _QualityChecks(target, lm, request, env, held_out)
    cases = [Case(name, getattr(checks, name)) for name in CASE_NAMES]
    details = target.describe() | {"held_out": held_out.source}
    return Plan(model=target.name, target=details, cases=cases)


def held_out_text(settings: Settings, metadata: dict[str, Any], request: QualityRequest) -> HeldOut:
    if request.text is not None:
        return HeldOut(request.text.encode("utf-8"), "request text")
    split = (metadata.get("evaluation") or {}).get("validation_split")
    if not isinstance(split, dict) or not isinstance(split.get("corpus"), str):
        return HeldOut(None, "no text given and no validation split in the model's metadata")
    try:
        data = load_corpus(split["corpus"], settings.data_dir).data
    except CorpusError as exc:
        return HeldOut(None, f"the validation corpus cannot be loaded: {exc}")
    start, end = split.get("start"), split.get("end", len(data))
    if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(data)):
        return HeldOut(None, f"the validation split {split} does not fit the corpus")
    return HeldOut(data[start:end], f"corpus {split['corpus']!r} bytes {start}..{end}")


class _QualityChecks:
    def __init__(
        self,
        target: ModelTarget,
        lm: LanguageModel,
        request: QualityRequest,
        env: SuiteEnv,
        held_out: HeldOut,
    ) -> None:
        self.target, self.lm, self.request, self.env = target, lm, request, env
        self.held_out = held_out
        self.evaluation: dict[str, Any] | None = None
        self.samples: list[CompletionOutput] | None = None

    @property
    def metadata_evaluation(self) -> dict[str, Any]:
        evaluation = self.target.info.metadata.get("evaluation")
        return evaluation if isinstance(evaluation, dict) else {}

    def _measured(self) -> dict[str, Any]:
        if self.evaluation is None:
            raise CaseSkipped("bits per byte were not measured")
        return self.evaluation

    def bits_per_byte(self) -> Details:
        if self.held_out.data is None:
            raise CaseSkipped(self.held_out.source)
        block = self.request.block_size or self._training_block_size()
        self.evaluation = measure_bits_per_byte(
            self.lm, self.held_out.data, block, self.request, self.env.watchdog.check
        )
        details = self.evaluation | {"source": self.held_out.source}
        expect(math.isfinite(self.evaluation["bits_per_byte"]), "bits per byte is not finite")
        recorded = self.metadata_evaluation.get("val_bits_per_byte")
        return details | ({"recorded_val_bits_per_byte": recorded} if recorded else {})

    def _training_block_size(self) -> int:
        training = self.target.info.metadata.get("training") or {}
        block = (training.get("hyperparameters") or {}).get("block_size")
        return block if isinstance(block, int) and block > 0 else DEFAULT_BLOCK_SIZE

    def bits_per_byte_threshold(self) -> Details:
        threshold = self.request.max_bits_per_byte or self.metadata_evaluation.get(
            "max_bits_per_byte"
        )
        if not isinstance(threshold, int | float):
            raise CaseSkipped(
                "no threshold: give max_bits_per_byte, or record evaluation.max_bits_per_byte "
                "in the model's metadata"
            )
        measured = self._measured()["bits_per_byte"]
        details = {"bits_per_byte": measured, "threshold": threshold}
        expect(measured <= threshold, "bits per byte above the threshold", **details)
        return details

    def beats_unigram_baseline(self) -> Details:
        evaluation = self._measured()
        measured, baseline = evaluation["bits_per_byte"], evaluation["unigram_bits_per_byte"]
        details = {"bits_per_byte": measured, "unigram_bits_per_byte": baseline}
        expect(measured < baseline, "the model does not beat the unigram baseline", **details)
        return details | {"margin": baseline - measured}

    def sample_valid_utf8(self) -> Details:
        samples = self._samples()
        invalid = sum(invalid_utf8_bytes(s.token_ids) for s in samples)
        total = sum(len(s.token_ids) for s in samples)
        fraction = 1.0 - invalid / max(1, total)
        details: Details = {"valid_fraction": fraction, "minimum": self.request.min_valid_utf8}
        details["example"] = clip(samples[0].text, 200)
        expect(fraction >= self.request.min_valid_utf8, "too much invalid UTF-8", **details)
        return details | {"bytes": total}

    def sample_repetition(self) -> Details:
        n = self.request.repetition_ngram
        rates = [repetition_rate(s.token_ids, n) for s in self._samples()]
        mean = sum(rates) / len(rates)
        details = {"mean_repetition": mean, "maximum": self.request.max_repetition, "ngram": n}
        expect(mean <= self.request.max_repetition, "sampled text repeats itself", **details)
        return details | {"per_sample": rates}

    def _samples(self) -> list[CompletionOutput]:
        if self.request.samples == 0:
            raise CaseSkipped("samples=0")
        if self.samples is None:
            self.samples = [self._sample(i) for i in range(self.request.samples)]
        return self.samples

    def _sample(self, index: int) -> CompletionOutput:
        params = SamplingParams(
            max_tokens=self.request.sample_tokens,
            temperature=self.request.temperature,
            seed=self.request.seed + index,
        )
        prompt = self.lm.encode_prompt(self._sample_prompt())
        watchdog = self.env.watchdog
        return generate(self.target, prompt, params, watchdog, via_engine=self.target.served)

    def _sample_prompt(self) -> str:
        data = self.held_out.data or b""
        text = data[:SAMPLE_PROMPT_BYTES].decode("utf-8", errors="ignore")
        return text or "\n"


@torch.no_grad()
def measure_bits_per_byte(
    lm: LanguageModel, data: bytes, block: int, request: QualityRequest, check: Any
) -> dict[str, Any]:
    """Mean cross-entropy in bits over evenly spaced windows, and the unigram baseline."""
    block = min(block, len(data) - 1)
    windows = max(1, min(request.max_bytes // block, (len(data) - 1) // block))
    starts = torch.linspace(0, len(data) - 1 - block, windows).long()  # (W,)
    everything = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
    offsets = torch.arange(block)
    total_nats, counts = 0.0, torch.zeros(256, dtype=torch.long)
    for batch in starts.split(request.batch_size):
        check()
        x = everything[batch[:, None] + offsets]  # (b, block)
        y = everything[batch[:, None] + offsets + 1]  # (b, block)
        logits, _ = lm.model(x.to(lm.device))  # (b, block, V)
        loss = F.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)),
            y.reshape(-1).to(lm.device),
            reduction="sum",
        )
        total_nats += float(loss)
        counts += torch.bincount(y.reshape(-1), minlength=256)
    predicted = int(counts.sum())
    return {
        "bits_per_byte": total_nats / predicted / LN2,
        "unigram_bits_per_byte": unigram_entropy(counts),
        "bytes": predicted,
        "windows": windows,
        "block_size": block,
    }


def unigram_entropy(counts: torch.Tensor) -> float:
    """Entropy in bits of the byte distribution with these counts."""
    p = counts[counts > 0].double() / counts.sum()
    return float(-(p * p.log2()).sum())


def invalid_utf8_bytes(token_ids: list[int]) -> int:
    """Bytes that are not part of a well-formed UTF-8 character."""
    text = bytes(token_ids).decode("utf-8", errors="surrogateescape")
    return sum(1 for char in text if "\udc80" <= char <= "\udcff")


def repetition_rate(token_ids: list[int], n: int) -> float:
    """1 - distinct n-grams / n-grams: 0 for text that never repeats an n-gram, near 1 for
    a loop."""
    grams = [tuple(token_ids[i : i + n]) for i in range(len(token_ids) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(Counter(grams)) / len(grams)
