"""Every model suite on the shipped model, `bdh-shakespeare`, through a real server."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core.engine import ModelRegistry, SamplingParams
from test_api.app import create_app
from tests.conftest import SHIPPED_MODEL
from tests.support.server import serve
from tests.test_api.conftest import component_settings
from tests.test_api.helpers import assert_clean, run_suite, statuses

REPO = Path(__file__).resolve().parents[2]
CACHED_CORPUS = REPO / "data" / "cache" / "shakespeare.txt"

# Sonnet 18, as held-out text that needs no corpus download.
SONNET = """Shall I compare thee to a summer's day?
Thou art more lovely and more temperate:
Rough winds do shake the darling buds of May,
And summer's lease hath all too short a date;
Sometime too hot the eye of heaven shines,
And often is his gold complexion dimm'd;
And every fair from fair sometime declines,
By chance or nature's changing course untrimm'd;
But thy eternal summer shall not fade,
Nor lose possession of that fair thou ow'st;
Nor shall death brag thou wander'st in his shade,
When in eternal lines to time thou grow'st:
So long as men can breathe or eyes can see,
So long lives this, and this gives life to thee.
"""


@pytest.fixture(scope="module")
def shipped_client(
    component_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    root = tmp_path_factory.mktemp("shipped")
    if CACHED_CORPUS.is_file():  # the validation split needs the corpus; never download it here
        (root / "data" / "cache").mkdir(parents=True)
        shutil.copyfile(CACHED_CORPUS, root / "data" / "cache" / CACHED_CORPUS.name)
    settings = component_settings(
        component_models,
        root / "db.sqlite",
        **{"data_dir": str(root / "data"), "model.preload": [SHIPPED_MODEL]},
    )
    with serve(create_app(settings)) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        yield c


def test_smoke(shipped_client: httpx.Client) -> None:
    _, report = run_suite(shipped_client, {"kind": "smoke", "model": SHIPPED_MODEL})
    report = assert_clean(report)
    assert report["skipped"] == 0 and report["target"]["parameters"] > 800_000


def test_consistency(shipped_client: httpx.Client) -> None:
    body = {"kind": "consistency", "model": SHIPPED_MODEL, "lengths": [1, 17, 64]}
    _, report = run_suite(shipped_client, body)
    assert assert_clean(report)["skipped"] == 0


def test_quality_on_a_sonnet(shipped_client: httpx.Client) -> None:
    body = {"kind": "quality", "model": SHIPPED_MODEL, "text": SONNET, "samples": 2}
    _, report = run_suite(shipped_client, body)
    report = assert_clean(report)
    # The threshold comes from the model's own metadata; it was recorded, so nothing skips.
    assert statuses(report)["bits_per_byte_threshold"] == "passed" and report["skipped"] == 0


def test_quality_on_its_validation_split(shipped_client: httpx.Client) -> None:
    if not CACHED_CORPUS.is_file():
        pytest.skip("the shakespeare corpus is not cached in data/cache (it would be downloaded)")
    body = {"kind": "quality", "model": SHIPPED_MODEL, "max_bytes": 2048, "samples": 1}
    _, report = run_suite(shipped_client, body)
    report = assert_clean(report)
    measured = report["cases"][0]["details"]
    assert measured["source"].startswith("corpus 'shakespeare'") and measured["bytes"] >= 2048


def test_prompts(shipped_client: httpx.Client, component_models: Path) -> None:
    lm = ModelRegistry(component_models).load(SHIPPED_MODEL)
    greedy = lm.generate("JULIET:\n", SamplingParams(max_tokens=24, temperature=0.0))
    assert isinstance(greedy, str)
    cases = [
        {"name": "speaks English", "prompt": "ROMEO:\n", "max_tokens": 48,
         "expect": {"regex": r"[A-Za-z]+ [A-Za-z]+"}},
        {"name": "as the model says", "prompt": "JULIET:\n", "max_tokens": 24,
         "expect": {"exact": greedy}},
    ]  # fmt: skip
    _, report = run_suite(
        shipped_client, {"kind": "prompts", "model": SHIPPED_MODEL, "cases": cases}
    )
    assert assert_clean(report)["passed"] == 2
