"""The console in Chromium against the real server: wizard, errors, a DPO job's live chart, playground, isolation.

Each test saves screenshots of the pages it visits: to a temporary directory, or, under `make screenshots`,
to docs/screenshots/ (shown in the README).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from helpers.data import first_lines

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

SignIn = Callable[..., None]
Shoot = Callable[..., None]


def _small_orca(orca_path: Path, tmp_path: Path, n: int) -> Path:
    return first_lines(orca_path, tmp_path / f"orca-{n}.jsonl", n)


def _upload(server: Any, path: Path, key: str | None = None) -> dict[str, Any]:
    with server.api(key) as api, path.open("rb") as fh:
        response = api.post("/files", data={"purpose": "fine-tune"}, files={"file": (path.name, fh)})
    response.raise_for_status()
    return dict(response.json())


def test_wrong_key_is_refused_in_words(page: Any, shoot: Shoot) -> None:
    page.goto("/")
    shoot(page, "sign-in")
    page.get_by_label("API key").fill("pt-not-a-real-key")
    page.get_by_role("button", name="Sign in").click()
    alert = page.get_by_role("alert").first
    alert.wait_for()
    assert alert.inner_text().strip()
    assert page.get_by_role("navigation", name="Main").is_hidden()


def test_wizard_uploads_a_sample_and_shows_its_report_and_preview(
    page: Any, sign_in: SignIn, shoot: Shoot, orca_path: Path
) -> None:
    sign_in(page)
    page.get_by_role("link", name="Create dataset").click()
    page.get_by_label("Dataset file").set_input_files(str(orca_path))
    page.get_by_label("Dataset name").fill("orca-pairs")
    shoot(page, "dataset-wizard")
    page.get_by_role("button", name="Upload and validate").click()
    report = page.get_by_role("region", name="Validation report")
    report.wait_for()
    text = report.inner_text()
    assert "284" in text, text
    assert "preference" in text
    assert "Every example is valid" in text
    shoot(page, "dataset-report")

    page.get_by_role("link", name="Open dataset").click()
    preview = page.get_by_role("region", name="Preview")
    preview.get_by_text("Example 1", exact=True).wait_for()
    assert preview.locator(".pair .preferred").count() >= 1
    # The two answers differ, so each side highlights words the other lacks.
    assert preview.locator("ins.diff").count() > 0 and preview.locator("del.diff").count() > 0
    preview.get_by_text("Example 5", exact=True).wait_for()
    assert preview.get_by_text("Example 6", exact=True).count() == 0
    preview.get_by_role("button", name="Show more examples").click()
    preview.get_by_text("Example 6", exact=True).wait_for()
    # Token-length histograms with a chosen model's tokenizer, computed by the server.
    chooser = page.get_by_label("Token statistics for model")
    chooser.locator("option[value='tiny-llama']").wait_for(state="attached")
    chooser.select_option("tiny-llama")
    histogram = page.get_by_role("img", name="Prompt token-length histogram")
    histogram.wait_for()
    assert histogram.locator("span").count() > 1
    assert page.get_by_role("img", name="Non-preferred answer token-length histogram").count() == 1
    histogram.scroll_into_view_if_needed()
    shoot(page, "dataset-token-histograms", full_page=False)
    preview.scroll_into_view_if_needed()
    shoot(page, "dataset-detail", full_page=False)
    shoot(page, "dataset-detail-narrow", narrow=True, full_page=False)

    page.get_by_role("link", name="Datasets", exact=True).click()
    row = page.get_by_role("row").filter(has_text="orca-pairs")
    row.wait_for()
    assert "284" in row.inner_text()
    shoot(page, "datasets")


def test_broken_file_shows_errors_with_line_numbers(
    page: Any, sign_in: SignIn, shoot: Shoot, orca_path: Path, tmp_path: Path
) -> None:
    good = orca_path.read_text(encoding="utf-8").splitlines()[0]
    missing = json.loads(good)
    del missing["non_preferred_output"]
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join([good, json.dumps(missing), "{not json", good]) + "\n", encoding="utf-8")

    sign_in(page)
    page.goto("/#/datasets/new")
    page.get_by_label("Dataset file").set_input_files(str(broken))
    page.get_by_role("button", name="Upload and validate").click()
    errors = page.get_by_role("table", name="errors")
    errors.wait_for()
    rows = errors.locator("tbody tr")
    cells = [rows.nth(i).inner_text() for i in range(rows.count())]
    assert any(re.match(r"^\s*2\s", c) and "non_preferred_output" in c for c in cells), cells
    assert any(re.match(r"^\s*3\s", c) for c in cells), cells
    shoot(page, "dataset-errors")

    # Delete it from the list (the browser's confirmation is accepted).
    page.once("dialog", lambda dialog: dialog.accept())
    page.goto("/#/datasets")
    page.get_by_role("button", name="Delete broken.jsonl").click()
    page.get_by_role("status").filter(has_text="Deleted broken.jsonl").wait_for()
    expect(page.get_by_role("button", name="Delete broken.jsonl")).to_have_count(0)


def test_dpo_job_from_the_form_trains_and_the_chart_grows(
    page: Any, server: Any, sign_in: SignIn, shoot: Shoot, orca_path: Path, tmp_path: Path
) -> None:
    dataset = _upload(server, _small_orca(orca_path, tmp_path, 8))
    sign_in(page)
    page.goto(f"/#/jobs/new?training_file={dataset['id']}")
    page.get_by_label("model", exact=True).fill("tiny-llama")
    page.get_by_label("batch_size").fill("2")
    page.get_by_label("max_length").fill("64")
    page.get_by_text("DPO and its variants").click()
    assert page.locator("#dpo-variants").is_visible()
    page.get_by_text("Advanced: schedule, checkpoints, evaluation").click()
    page.get_by_label("max_steps").fill("4")
    page.get_by_label("n_checkpoints").fill("2")
    shoot(page, "job-create")

    # A value the server rejects is reported on its field, in the server's words, and nothing is created.
    page.get_by_label("dpo_beta").fill("0")
    page.get_by_role("button", name="Create job").click()
    expect(page.locator("[data-knob=dpo_beta]")).to_have_class(re.compile(r"\binvalid\b"))
    assert "dpo_beta" in page.get_by_role("alert").first.inner_text()
    assert "#/jobs/new" in page.url
    page.get_by_label("dpo_beta").fill("0.1")
    page.get_by_role("button", name="Create job").click()

    page.wait_for_url(re.compile(r"#/jobs/ftjob-"))
    loss = page.get_by_role("group", name="Loss")
    status = page.get_by_test_id("job-status")
    # The chart gains points while the job runs, without reloading the page.
    seen: list[int] = []
    shot_running = False
    deadline = time.monotonic() + 420
    while time.monotonic() < deadline:
        points = int(loss.get_attribute("data-points") or 0)
        if not seen or points != seen[-1]:
            seen.append(points)
        state = status.inner_text()
        if state in {"completed", "error", "user error", "cancelled"}:
            break
        if points and not shot_running:
            shoot(page, "job-running")
            shot_running = True
        page.wait_for_timeout(250)
    assert status.inner_text() == "completed", f"job ended so: {page.locator('main').inner_text()[:2000]}"
    expect(loss).to_have_attribute("data-points", "4")
    assert seen[-1] <= 4 and len(seen) >= 2, seen
    for chart in ("Reward accuracy", "Reward margin", "Log-probs: chosen and rejected", "Learning rate"):
        assert int(page.get_by_role("group", name=chart).get_attribute("data-points") or 0) > 0, chart
    events = page.get_by_role("list", name="Event log").inner_text()
    assert "TRAINING_COMPLETE" in events
    checkpoints = page.get_by_role("region", name="Checkpoints")
    assert checkpoints.get_by_role("button", name="Download adapter").is_visible()
    assert checkpoints.get_by_role("link", name="Continue from here").count() >= 1
    shoot(page, "job")
    shoot(page, "job-narrow", narrow=True)

    with page.expect_download() as download:
        checkpoints.get_by_role("button", name="Download step 4").click()
    assert download.value.suggested_filename.endswith(".tar")
    assert Path(download.value.path()).stat().st_size > 0

    # Continue from the last checkpoint: the form opens with from_checkpoint filled in; then cancel that job.
    job_id = page.url.rsplit("/", 1)[-1]
    checkpoints.get_by_role("row").filter(has_text="step 4").get_by_role(
        "link", name="Continue from here"
    ).click()
    expect(page.get_by_label("from_checkpoint")).to_have_value(f"{job_id}:4")
    page.get_by_label("max_steps").fill("200")
    page.get_by_role("button", name="Create job").click()
    page.wait_for_url(lambda url: "#/jobs/ftjob-" in url and job_id not in url)
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Cancel job").click()
    expect(status).to_have_text("cancelled", timeout=120_000)

    page.get_by_role("link", name="Jobs", exact=True).click()
    page.get_by_role("row").filter(has_text="completed").first.wait_for()
    shoot(page, "jobs")


def test_playground_streams_two_models_side_by_side(page: Any, sign_in: SignIn, shoot: Shoot) -> None:
    sign_in(page)
    page.goto("/#/playground")
    page.get_by_label("Model A").fill("tiny-llama")
    page.get_by_label("Model B").fill("tiny-llama")
    page.get_by_label("Max tokens").fill("12")
    page.get_by_label("Message").fill("Say hello.")
    page.get_by_role("button", name="Send to both").click()
    done = page.locator(".msg.assistant[data-done=true]")
    expect(done).to_have_count(2, timeout=120_000)
    answers = page.locator(".msg.assistant .body")
    for i in range(2):
        text = answers.nth(i).inner_text()
        assert text.strip() and "could not answer" not in text, text
    shoot(page, "playground")


def test_a_second_owner_cannot_see_the_first_owners_work(
    page: Any, server: Any, sign_in: SignIn, shoot: Shoot, orca_path: Path, tmp_path: Path
) -> None:
    first = _upload(server, _small_orca(orca_path, tmp_path, 3))
    sign_in(page)
    page.goto("/#/keys")
    page.get_by_label("Key name").fill("colleague")
    page.get_by_label("For a new user").check()
    page.get_by_role("button", name="Create key").click()
    secret = page.get_by_test_id("new-key").inner_text().strip()
    assert secret
    shoot(page, "keys")

    page.get_by_role("button", name="Sign out").click()
    sign_in(page, secret)
    page.get_by_text("No datasets yet.").wait_for()
    page.goto("/#/jobs")
    page.get_by_text("No fine-tuning jobs yet.").wait_for()
    page.goto(f"/#/datasets/{first['id']}")
    alert = page.get_by_role("alert").first
    alert.wait_for()
    assert first["id"] in alert.inner_text()
    assert "orca" not in page.locator("main").inner_text()

    # The colleague revokes their own key: the console notices at once and asks to sign in again.
    page.goto("/#/keys")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Revoke key colleague").click()
    page.get_by_label("API key").wait_for()
    assert "not accepted" in page.get_by_role("alert").first.inner_text()
    expect(page.get_by_role("navigation", name="Main")).to_be_hidden()


def test_an_upload_retried_after_a_lost_answer_makes_one_file(
    page: Any, server: Any, sign_in: SignIn, orca_path: Path, tmp_path: Path
) -> None:
    data = _small_orca(orca_path, tmp_path, 6)
    upload = data.with_name("retried-upload.jsonl")
    data.rename(upload)
    keys: list[str | None] = []

    def lose_first_answer(route: Any) -> None:
        # The first upload reaches the server but its answer never reaches the page (a dropped
        # connection). Playwright cannot forward an XHR's file body (route.fetch() sends it empty),
        # so the server gets this attempt as the console sends it (same form, same headers) from here.
        headers = route.request.headers
        keys.append(headers.get("idempotency-key"))
        if len(keys) > 1:
            route.continue_()
            return
        sent = {"Authorization": headers["authorization"]}
        if headers.get("idempotency-key"):
            sent["Idempotency-Key"] = headers["idempotency-key"]
        with server.api() as api, upload.open("rb") as fh:
            stored = api.post(
                "/files", data={"purpose": "fine-tune"}, files={"file": (upload.name, fh)}, headers=sent
            )
        assert stored.status_code == 200, stored.text
        route.abort("connectionreset")

    sign_in(page)
    page.route("**/v1/files", lose_first_answer)
    page.goto("/#/datasets/new")
    page.get_by_label("Dataset file").set_input_files(str(upload))
    page.get_by_role("button", name="Upload and validate").click()
    page.get_by_role("button", name="Try again").click()
    page.get_by_role("region", name="Validation report").wait_for()
    assert len(keys) == 2 and keys[0] and keys[0] == keys[1], keys
    with server.api() as api:
        files = api.get("/files", params={"limit": 1000}).json()["data"]
    assert [f["filename"] for f in files].count(upload.name) == 1
