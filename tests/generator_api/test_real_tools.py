"""The benchmark and eval tools written against vLLM, run for real against our server.

They live in their own virtualenv (``make tools``: the ``tools`` extra of pyproject.toml), since
their pins move click, multidict and python-dateutil below the project's; the project's torch is
reused. ``HATCHERY_TOOLS_BIN`` names that venv's ``bin`` (``make test`` sets it). Both run
offline: guidellm with a local byte tokenizer, lm-eval on a local task file with
``tokenizer_backend=remote`` (our ``/tokenizer_info``, ``/tokenize``, ``/detokenize``).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from core.engine.sequence import TokenLogprob
from generator_api.generation import prompt_logprobs_sync
from tests.support.server import LiveServer

from .conftest import MODEL

TOOLS_BIN = Path(os.environ.get("HATCHERY_TOOLS_BIN", "/nonexistent"))
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
DOCS = [
    {"context": "ROMEO: O, she doth teach the torches to", "continuation": " burn bright"},
    {"context": "JULIET: What's in a", "continuation": " name"},
    {"context": "To be, or not to be, that is the", "continuation": " question"},
]

pytestmark = pytest.mark.skipif(
    not (TOOLS_BIN / "guidellm").exists(),
    reason="the tools venv is missing: run `make tools` or set HATCHERY_TOOLS_BIN",
)


def run_tool(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = os.environ | OFFLINE | {"NO_COLOR": "1"}
    done = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=240, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_guidellm_default_streaming_benchmark(server: LiveServer, tmp_path: Path) -> None:
    tokenizer = tmp_path / "byte-tokenizer"
    run_tool(
        [
            str(TOOLS_BIN / "python"),
            "-c",
            "import sys, transformers; transformers.ByT5Tokenizer().save_pretrained(sys.argv[1])",
            str(tokenizer),
        ],
        tmp_path,
    )
    report = tmp_path / "guidellm.json"
    run_tool(
        [
            str(TOOLS_BIN / "guidellm"),
            "run",
            "--backend",
            f"kind=openai_http,target={server.url},model={MODEL}",
            "--tokenizer",
            f"kind=hf_auto,model={tokenizer}",
            "--profile",
            "kind=concurrent,streams=2",
            "--data",
            "kind=synthetic_text,prompt_tokens=32,output_tokens=16",
            "--constraint",
            "kind=max_requests,count=6",
            "--output",
            f"kind=json,path={report}",
            "--disable-progress",
        ],
        tmp_path,
    )
    (benchmark,) = json.loads(report.read_text())["benchmarks"]
    metrics = benchmark["metrics"]
    totals = metrics["request_totals"]
    assert totals["successful"] == 6 and totals["errored"] == 0, totals
    assert metrics["output_token_count"]["successful"]["mean"] == 16  # ignore_eos honoured
    assert metrics["time_to_first_token_ms"]["successful"]["mean"] > 0
    assert metrics["inter_token_latency_ms"]["successful"]["mean"] > 0


def test_lm_eval_local_completions_with_the_remote_tokenizer(
    server: LiveServer, tmp_path: Path
) -> None:
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps(doc) + "\n" for doc in DOCS))
    (tmp_path / "byte_ll.yaml").write_text(
        "task: byte_ll\n"
        "dataset_path: json\n"
        f"dataset_kwargs: {{data_files: {{test: {docs}}}}}\n"
        "test_split: test\n"
        "output_type: loglikelihood\n"
        'doc_to_text: "{{context}}"\n'
        'doc_to_target: "{{continuation}}"\n'
        "metric_list: [{metric: perplexity, aggregation: perplexity, higher_is_better: false}]\n"
    )
    out = tmp_path / "out"
    run_tool(
        [
            str(TOOLS_BIN / "lm_eval"),
            "--model",
            "local-completions",
            "--model_args",
            f"model={MODEL},base_url={server.url}/v1/completions,tokenizer_backend=remote,"
            "num_concurrent=1,max_retries=1",
            "--include_path",
            str(tmp_path),
            "--tasks",
            "byte_ll",
            "--output_path",
            str(out),
            "--log_samples",
        ],
        tmp_path,
    )
    (samples_file,) = out.rglob("samples_byte_ll_*.jsonl")
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
    lm = server.app.state.engine.scheduler(MODEL).lm
    assert len(samples) == len(DOCS)
    for sample in samples:
        doc = sample["doc"]
        ids = list((doc["context"] + doc["continuation"]).encode())
        entries = prompt_logprobs_sync(lm, ids, 0)
        tail = entries[len(doc["context"].encode()) :]
        expected = sum(entry.logprob for entry in tail if isinstance(entry, TokenLogprob))
        (measured, _greedy) = sample["resps"][0][0]
        assert float(measured) == pytest.approx(expected, abs=1e-4)
