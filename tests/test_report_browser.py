"""The report in a real headless Chromium: images load, no console errors, nothing leaves the file.

Needs Debian's ``chromium`` (``apt-get install chromium``) and Playwright's Python package
(the ``test`` extra); Playwright's own browser download is not used. The full-page
screenshot goes to ``BALANCE_REPORT_SCREENSHOT`` when that is set, else into the
test's temporary folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from balance.config import StudyConfig, build
from balance.report import build_report
from balance.study import sweep

CHROMIUM = os.environ.get("BALANCE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Skipped on a developer's machine without the browser; under CI (CI=true) a missing
# browser or Playwright fails the run instead, so the check cannot vanish unnoticed.
if os.environ.get("CI") and (shutil.which(CHROMIUM) is None):
    pytest.fail(f"CI needs Chromium at {CHROMIUM} (apt-get install chromium)", pytrace=False)
if os.environ.get("CI"):
    import playwright.sync_api as sync_api
else:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytestmark = [
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason=f"no Chromium at {CHROMIUM}"),
    pytest.mark.filterwarnings("ignore::balance.range_test.RangeTestWarning"),
]


def browser_study() -> StudyConfig:
    """A 2 x 2 grid at one batch size, 2 seeds, a range test and a baseline: every section."""
    return build(
        StudyConfig,
        {  # type: ignore[no-any-return]
            "name": "browser",
            "sampler": "grid",
            "seeds": 2,
            "train": {
                "data": "digits",
                "model": "mlp",
                "epochs": 2,
                "batch_size": 64,
                "threads": 1,
            },
            "range_test": {"num_steps": 30, "val_every": 5},
            "search": {"weight_decay": [0.0, 1e-3], "dropout": [0.0, 0.2]},
            "baseline": {"optimizer": "adam", "policy": "constant", "max_lr": 0.01},
        },
    )


def test_report_opens_in_chromium_with_every_image_and_no_outside_request(
    tmp_path: Path,
) -> None:
    config = browser_study()
    sweep(config, root=tmp_path)
    page_path = build_report(config, root=tmp_path).resolve()
    screenshot = Path(os.environ.get("BALANCE_REPORT_SCREENSHOT", tmp_path / "report.png"))
    screenshot.parent.mkdir(parents=True, exist_ok=True)

    requests: list[str] = []
    problems: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda request: requests.append(request.url))
            page.on(
                "console",
                lambda message: (
                    problems.append(f"console {message.type}: {message.text}")
                    if message.type in ("error", "warning")
                    else None
                ),
            )
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on(
                "requestfailed",
                lambda request: problems.append(f"request failed: {request.url[:80]}"),
            )
            page.goto(page_path.as_uri(), wait_until="load")
            images = page.evaluate(
                "Array.from(document.images).map(i => [i.complete, i.naturalWidth, "
                "i.naturalHeight, i.src.slice(0, 22)])"
            )
            title = page.title()
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()

    assert title == "balance report: browser"
    assert len(images) >= 8
    for complete, width, height, source in images:
        assert complete and width > 0 and height > 0, (width, height, source)
        assert source == "data:image/png;base64,"
    assert problems == []
    assert requests, "the page itself was not requested"
    outside = [url for url in requests if not url.startswith(("file:", "data:"))]
    assert outside == []
    assert screenshot.stat().st_size > 50_000
