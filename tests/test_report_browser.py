"""The report in a real headless Chromium: images load, no console errors, nothing leaves the file.

Needs a Chromium: ``BALANCE_CHROMIUM``, else ``chromium`` on PATH (Debian's package, which
``scripts/setup-machine`` installs when absent), and
Playwright's Python package (the ``test`` extra); Playwright's own browser download is not
used. A missing browser fails these tests: the check must not vanish unnoticed. Screenshots
go to ``BALANCE_REPORT_SCREENSHOT_DIR`` when that is set, else into the test's tmp folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from playwright import sync_api

from balance.config import StudyConfig, build
from balance.pipeline import report as build_report
from balance.pipeline import sweep

CHROMIUM = Path(
    os.environ.get("BALANCE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
)
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
EXAMPLE = Path(__file__).parents[1] / "reports" / "example" / "mnist1d-cnn" / "index.html"

pytestmark = pytest.mark.filterwarnings("ignore::balance.range_test.RangeTestWarning")


def open_in_chromium(page_path: Path, screenshot: Path) -> dict[str, object]:
    """Load ``page_path`` from disk; return its title, images, requests and problems."""
    assert CHROMIUM.exists(), f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    requests: list[str] = []
    problems: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
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
            page.goto(page_path.resolve().as_uri(), wait_until="load")
            images = page.evaluate(
                "Array.from(document.images).map(i => [i.complete, i.naturalWidth, "
                "i.naturalHeight, i.src.slice(0, 22)])"
            )
            title = page.title()
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {"title": title, "images": images, "requests": requests, "problems": problems}


def assert_self_contained(seen: dict[str, object], min_images: int) -> None:
    """Every image is an embedded PNG that decoded; no console errors; no outside request."""
    images = seen["images"]
    assert isinstance(images, list) and len(images) >= min_images
    for complete, width, height, source in images:
        assert complete and width > 0 and height > 0, (width, height, source)
        assert source == "data:image/png;base64,"
    assert seen["problems"] == []
    requests = seen["requests"]
    assert isinstance(requests, list) and requests, "the page itself was not requested"
    assert [url for url in requests if not url.startswith(("file:", "data:"))] == []


def screenshot_path(tmp_path: Path, name: str) -> Path:
    folder = os.environ.get("BALANCE_REPORT_SCREENSHOT_DIR")
    return (Path(folder) if folder else tmp_path) / name


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
    page_path = build_report(config, root=tmp_path)
    screenshot = screenshot_path(tmp_path, "browser.png")

    seen = open_in_chromium(page_path, screenshot)

    assert seen["title"] == "balance report: browser"
    assert_self_contained(seen, min_images=8)
    assert screenshot.stat().st_size > 50_000


def test_committed_example_report_of_the_default_study_opens_in_chromium(tmp_path: Path) -> None:
    screenshot = screenshot_path(tmp_path, "screenshot.png")

    seen = open_in_chromium(EXAMPLE, screenshot)

    assert seen["title"] == "balance report: mnist1d-cnn"
    assert_self_contained(seen, min_images=9)
    assert screenshot.stat().st_size > 100_000
