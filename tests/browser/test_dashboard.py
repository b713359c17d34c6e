"""The dashboard on the unified server, in a real browser: runs, reports, live curves,
benchmark plots and CSV, compare, models and the playground."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from playwright.sync_api import expect

from tests.browser.conftest import api_client
from tests.browser.helpers import PLOT_LOADED, finished, start, succeeded_benchmark
from tests.support.server import LiveServer

expect.set_options(timeout=120_000)
Shoot = Callable[[str], None]
MORE_POINTS_THAN = """(count) => {
  const curve = document.querySelector("[data-chart=loss] svg");
  return curve !== null && Number(curve.dataset.points) > count;
}"""


def test_a_smoke_test_started_from_the_form_reaches_its_outcome(
    unified: LiveServer, page: Any, shoot: Shoot
) -> None:
    page.goto(f"{unified.url}/ui/#/start?component=test&kind=smoke")
    expect(page.locator(".field[data-field=model] input")).to_have_value("bdh-nano")
    shoot("start")
    page.locator("form.request button[type=submit]").click()
    page.wait_for_url(re.compile(r"#/run/test/"))
    run_id = page.url.rsplit("/", 1)[1]
    expect(page.locator(".heading .badge.succeeded")).to_be_visible()
    expect(page.locator(".summary .badge")).to_have_text("passed")
    expect(page.locator("table.report tbody tr").first).to_be_visible()
    expect(page.locator("details.log summary")).to_contain_text("events")

    page.goto(f"{unified.url}/ui/#/runs")
    row = page.locator(f"tr[data-run='{run_id}']")
    expect(row.locator(".badge.succeeded")).to_be_visible()
    expect(page.locator(".heading .muted")).to_contain_text(re.compile(r"of \d+"))
    shoot("runs")


def test_the_apis_validation_error_is_shown_next_to_its_field(
    unified: LiveServer, page: Any
) -> None:
    page.goto(f"{unified.url}/ui/#/start?component=test&kind=smoke")
    page.locator("details.more > summary").click()
    field = page.locator(".field[data-field=max_tokens]")
    field.locator("input").fill("0")
    page.locator("form.request button[type=submit]").click()
    expect(field.locator(".field-error")).to_contain_text("greater than or equal to 1")
    expect(field).to_have_class(re.compile("invalid"))
    assert "#/start" in page.url  # nothing was started


def test_a_test_report_filters_its_failed_cases(
    unified: LiveServer, page: Any, shoot: Shoot
) -> None:
    cases = [
        {
            "name": "says something",
            "prompt": "ROMEO:",
            "expect": {"regex": "[\\s\\S]"},
            "max_tokens": 8,
        },
        {
            "name": "impossible",
            "prompt": "ROMEO:",
            "expect": {"exact": "never this text"},
            "max_tokens": 8,
        },
    ]
    with api_client(unified) as client:
        run_id = start(client, "test", {"kind": "prompts", "cases": cases})
    page.goto(f"{unified.url}/ui/#/run/test/{run_id}")
    rows = page.locator("table.report tbody tr")
    expect(page.locator(".summary .badge")).to_have_text("failed")
    expect(rows).to_have_count(2)
    page.locator("input[name=failed-only]").check()
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_class(re.compile("case-failed"))
    expect(rows.first).to_contain_text("impossible")
    # The case's details are a definition list of what was checked, as text, not markup.
    details = rows.first.locator("dl.details")
    expect(details.locator("dt").first).to_be_visible()
    expect(details).to_contain_text("never this text")
    expect(rows.first).not_to_contain_text("[object")
    shoot("run-test-report")


def test_a_benchmark_started_from_the_form_shows_its_plot_and_downloads_its_csv(
    unified: LiveServer, page: Any, shoot: Shoot
) -> None:
    page.goto(f"{unified.url}/ui/#/start?component=benchmark&kind=engine")
    form = page.locator("form.request")
    # Lists are typed as plain values (comma-separated), never as JSON.
    for name, value in {"batch_sizes": "1", "context_lengths": "16", "new_tokens": "4"}.items():
        form.locator(f".field[data-field={name}] input").fill(value)
    form.locator(".field[data-field=repeats] input").fill("1")
    form.locator("details.more > summary").click()
    form.locator(".field[data-field=modes] input").fill("recurrent")
    form.locator(".field[data-field=warmup] input").fill("0")
    form.locator(".field[data-field=bandwidth_mb] input").fill("4")
    form.locator("button[type=submit]").click()
    page.wait_for_url(re.compile(r"#/run/benchmark/"))
    run_id = page.url.rsplit("/", 1)[1]
    page.wait_for_function(PLOT_LOADED, timeout=120_000)
    expect(page.locator("table.grid tbody tr").first).to_contain_text("recurrent")
    with page.expect_download() as download:
        page.get_by_role("button", name="Download CSV").click()
    assert download.value.suggested_filename == f"benchmark-{run_id}.csv"
    text = Path(download.value.path()).read_text(encoding="utf-8")
    assert text.splitlines()[0].startswith("mode,") and len(text.splitlines()) == 2
    shoot("run-benchmark")


def test_two_benchmark_runs_compare_in_a_table_and_an_overlay_plot(
    unified: LiveServer, page: Any, shoot: Shoot
) -> None:
    with api_client(unified) as client:
        first = succeeded_benchmark(client)
        second = succeeded_benchmark(client, context_lengths=[16, 32])
    page.goto(f"{unified.url}/ui/#/compare?ids={first},{second}")
    expect(page.locator("table.compare tbody tr")).to_have_count(2)  # ctx 16 in both, 32 in one
    expect(page.locator("table.compare thead")).to_contain_text("(baseline)")
    expect(page.locator("[data-chart=compare] path.line")).to_have_count(2)  # one line per run
    page.locator("select[name=metric]").select_option("ttft_ms")
    expect(page.locator("svg.chart[aria-label=ttft_ms]")).to_be_visible()
    shoot("compare")


def test_a_model_created_from_the_form_trains_with_a_live_curve(
    unified: LiveServer, page: Any, shoot: Shoot
) -> None:
    page.goto(f"{unified.url}/ui/#/models")
    registry = page.locator("table.grid").first
    expect(registry).to_contain_text("bdh-nano")
    expect(registry).to_contain_text("64.0 KB")  # state per sequence: 2 layers, 2 heads, 128 x 32
    expect(registry).not_to_contain_text("[object")
    form = page.locator("form.request")
    form.locator(".field[data-field=name] input").fill("browser-trained")
    form.locator(".field[data-field=template] input").fill("bdh-nano")
    form.locator(".field[data-field=corpus] input").fill("")
    form.locator(".field[data-field=steps] input").fill("60")
    form.locator("details.more > summary").click()
    form.locator(".field[data-field=text] textarea").fill(
        "To be, or not to be, that is the question. " * 40
    )
    form.locator(".field[data-field=block_size] input").fill("32")
    form.locator(".field[data-field=batch_size] input").fill("4")
    form.locator(".field[data-field=eval_every] input").fill("30")
    form.locator(".field[data-field=eval_batches] input").fill("1")
    shoot("models")
    form.locator("button[type=submit]").click()
    page.wait_for_url(re.compile(r"#/run/generator/"))
    curve = page.locator("[data-chart=loss] svg.chart")
    page.wait_for_function(MORE_POINTS_THAN, arg=0)
    seen = int(curve.get_attribute("data-points"))
    # The curve gains points as metric events arrive (7 over the run: step 1, then every 10).
    page.wait_for_function(MORE_POINTS_THAN, arg=seen)
    expect(page.locator(".heading .badge.succeeded")).to_be_visible()
    assert int(curve.get_attribute("data-points")) == 7
    assert int(page.locator("[data-chart=bpb] svg").get_attribute("data-points")) >= 1
    expect(page.locator("section.card table.grid")).to_contain_text("browser-trained")
    shoot("run-training")
    page.goto(f"{unified.url}/ui/#/models?name=browser-trained")
    expect(page.locator("tr.highlight")).to_contain_text("browser-trained")


def test_the_playground_streams_a_chat_reply(unified: LiveServer, page: Any, shoot: Shoot) -> None:
    posted: list[str] = []
    page.on(
        "request",
        lambda r: r.url.endswith("/v1/chat/completions") and posted.append(r.post_data or ""),
    )
    page.goto(f"{unified.url}/ui/#/playground")
    expect(page.locator("select[name=model] option")).not_to_have_count(0)
    page.locator("input[name=seed]").fill("7")
    page.locator("input[name=max_tokens]").evaluate(
        "(knob) => { knob.value = '24'; knob.dispatchEvent(new Event('input')); }"
    )
    page.locator("textarea[name=prompt]").fill("Speak, friend.")
    page.get_by_role("button", name="Send").click()
    reply = page.locator(".msg.assistant pre")
    expect(reply).to_have_attribute("data-finish", re.compile(r"\w+"))
    assert reply.inner_text().strip()
    expect(page.locator(".usage")).to_contain_text("completion tokens")
    assert '"stream":true' in posted[0] and '"max_tokens":24' in posted[0]
    shoot("playground")


def test_a_text_run_shows_its_completions(unified: LiveServer, page: Any) -> None:
    with api_client(unified) as client:
        run_id = start(
            client, "generator", {"kind": "text", "prompts": ["ROMEO:", "JULIET:"], "max_tokens": 8}
        )
        assert finished(client, "generator", run_id)["status"] == "succeeded"
    page.goto(f"{unified.url}/ui/#/run/generator/{run_id}")
    expect(page.locator("table.grid tbody tr")).to_have_count(2)


def test_the_runs_page_follows_an_active_run_live_and_cancels_it(
    unified: LiveServer, page: Any
) -> None:
    text = "Now is the winter of our discontent made glorious summer. " * 40
    with api_client(unified) as client:
        run_id = start(
            client,
            "generator",
            {"kind": "model", "name": "never-finished", "text": text, "steps": 5000},
        )
    # The page follows the active run over the run's own WebSocket.
    with page.expect_websocket(lambda socket: f"/ws/{run_id}" in socket.url):
        page.goto(f"{unified.url}/ui/#/runs")
    row = page.locator(f"tr[data-run='{run_id}']")
    # Training progress ("step N/5000: loss ...") arrives as the run's own events.
    expect(row.locator("td.message")).to_contain_text("/5000: loss")
    row.get_by_role("button", name="Cancel").click()
    expect(row.locator(".badge.cancelled")).to_be_visible()
    expect(row.get_by_role("button", name="Cancel")).to_have_count(0)
