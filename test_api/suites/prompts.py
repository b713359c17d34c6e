"""Prompts: the user's own cases — a prompt, sampling settings and an expectation.

Each case generates once (through the engine's scheduler when it serves the requested device
and dtype, as the server would answer) and passes when its expectation holds: ``contains``,
``not_contains``, ``regex`` (searched anywhere; patterns are capped in length and matched with a
time limit, so a pathological pattern cannot hang the worker) or ``exact``.
"""

from __future__ import annotations

from typing import Any

import regex

from core.engine import LanguageModel
from test_api.cases import Case, CaseFailed, Details, Plan, SuiteEnv, clip
from test_api.schemas import Expectation, PromptCase, PromptsRequest
from test_api.target import ModelTarget, find_target, generate, load_or_fail

KIND = "prompts"
REQUEST = PromptsRequest
DESCRIPTION = "User cases: prompt + sampling settings + contains / not_contains / regex / exact."
CASE_NAMES = ("<each case's name>",)
REGEX_TIMEOUT_S = 1.0


def plan(env: SuiteEnv, request: PromptsRequest) -> Plan:
    target = find_target(env.settings, env.engine, request)
    lm = load_or_fail(target)
    cases = [Case(case.name, _runner(target, lm, case, env)) for case in request.cases]
    details = target.describe() | {"path": "scheduler" if target.served else "direct"}
    return Plan(model=target.name, target=details, cases=cases)


def _runner(target: ModelTarget, lm: LanguageModel, case: PromptCase, env: SuiteEnv) -> Any:
    def run() -> Details:
        params = case.sampling_params()
        output = generate(
            target, lm.encode_prompt(case.prompt), params, env.watchdog, via_engine=target.served
        )
        details = {
            "text": clip(output.text),
            "finish_reason": output.finish_reason,
            "completion_tokens": output.completion_tokens,
            "expect": case.expect.describe(),
        }
        holds, why = expectation_holds(case.expect, output.text)
        if not holds:
            raise CaseFailed(why, **details)
        return details

    return run


def expectation_holds(expectation: Expectation, text: str) -> tuple[bool, str]:
    """(whether ``text`` meets the expectation, what was wrong if not)."""
    fold = str.casefold if expectation.ignore_case else (lambda s: s)
    if expectation.contains is not None:
        return fold(expectation.contains) in fold(text), "the text does not contain it"
    if expectation.not_contains is not None:
        return fold(expectation.not_contains) not in fold(text), "the text contains it"
    if expectation.exact is not None:
        return fold(expectation.exact) == fold(text), "the text is not exactly it"
    assert expectation.regex is not None
    return regex_search(expectation.regex, text, expectation.ignore_case), "no regex match"


def regex_search(pattern: str, text: str, ignore_case: bool) -> bool:
    flags = regex.IGNORECASE if ignore_case else 0
    try:
        return regex.search(pattern, text, flags=flags, timeout=REGEX_TIMEOUT_S) is not None
    except TimeoutError:
        raise RuntimeError(f"the regex took longer than {REGEX_TIMEOUT_S:g} s to match") from None
