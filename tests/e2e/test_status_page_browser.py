"""The status page in a real browser: Debian's headless Chromium, driven by selenium through
``/usr/bin/chromedriver``, looking at a real bridge process that streams real messages from a
Salesforce-like CometD server (replay on) into RabbitMQ, with ``BRIDGE_HTTP_TOKEN`` set.

``make pytest`` installs chromium and chromium-driver when missing (the ``browser`` target).
The screenshot goes to the test's temporary directory; with ``UPDATE_STATUS_SCREENSHOT=1`` it
also replaces ``docs/status-page.png`` (the README's picture).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from bridge.http import bound_port, start_http_server
from tests.e2e.harness import BridgeProcess, QueueCollector, running_bridge
from tests.e2e.test_noloss_faults import sf_env
from tests.integration.noloss.conftest import (
    SalesforceFactory,
    salesforce_factory,  # noqa: F401 (the fixture)
)


pytestmark = pytest.mark.integration

CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM = "/usr/bin/chromium"
CHANNEL = "/event/Order__e"
TOKEN = "browser-test-token"
COUNT = 300
RATE = 40.0  # messages/s: ~7 s of streaming, so the page sees the numbers move
WAIT = 20.0  # bound on each wait in the browser
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "status-page.png"


@pytest.fixture
def browser() -> Iterator[Any]:
    if not (os.access(CHROMEDRIVER, os.X_OK) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip("chromium/chromium-driver not installed (make pytest installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in a container: Chromium's sandbox cannot start there
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1200,900",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(arg)
    # An explicit driver path: selenium's manager then downloads nothing (air-gapped CI).
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


async def wait_in(driver: Any, what: str, condition: Callable[[Any], Any]) -> Any:
    """Wait (bounded) in a thread, so this test's event loop keeps consuming from RabbitMQ."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    def wait() -> Any:
        return WebDriverWait(driver, WAIT, poll_frequency=0.2).until(condition)

    try:
        return await asyncio.to_thread(wait)
    except TimeoutException:
        raise AssertionError(f"the page did not show {what} within {WAIT}s") from None


def field(driver: Any, *path: str) -> str:
    """The text of the element bound to ``path`` in the status dict."""
    from selenium.webdriver.common.by import By

    key = "[" + ",".join(f'"{p}"' for p in path) + "]"
    return str(driver.find_element(By.CSS_SELECTOR, f"[data-k='{key}']").text)


def number(text: str) -> int:
    return int(text.replace(",", "")) if re.fullmatch(r"[\d,]+", text) else -1


async def first_view(bridge: BridgeProcess) -> str:
    """``/`` as a client without JavaScript gets it."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
        session.get(bridge.base_url + "/", headers=headers) as resp,
    ):
        assert resp.status == 200
        return await resp.text()


async def test_status_page_in_a_real_browser(
    salesforce_factory: SalesforceFactory,  # noqa: F811 (the imported fixture)
    browser: Any,
    collector: QueueCollector,
    exchange_name: str,
    tmp_path: Path,
) -> None:
    from selenium.webdriver.common.by import By

    server = salesforce_factory()
    env = {**sf_env(tmp_path, server, exchange_name), "BRIDGE_HTTP_TOKEN": TOKEN}
    async with running_bridge(env, tmp_path) as bridge:
        await server.publish(CHANNEL, COUNT, rate=RATE, wait=False)
        await collector.wait_for(20, within=WAIT, what="the first messages")

        # Without JavaScript: the server-rendered page already names the endpoint and state.
        html = await first_view(bridge)
        assert 'data-endpoint="src"' in html
        assert re.search(r'data-f="state" class="state state-streaming">streaming<', html), html

        # The browser: signed out it gets the login form; the token signs it in.
        browser.get(bridge.base_url + "/")
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        await wait_in(
            browser,
            "the endpoint card",
            lambda d: d.find_elements(By.CSS_SELECTOR, "[data-endpoint='src']"),
        )
        # Drained: the sign-in page's expected 401 is no error of the page itself.
        browser.get_log("browser")
        assert field(browser, "endpoints", "src", "state") == "streaming"
        assert field(browser, "endpoints", "src", "connection_type") == "long-polling"
        assert field(browser, "amqp", "connected") == "yes"

        # The script refreshes the numbers from /status: they move while the page stays loaded.
        browser.execute_script("window.__sameDocument = true;")
        shown = number(field(browser, "endpoints", "src", "received_total"))
        assert shown >= 1
        await wait_in(
            browser,
            f"a received count above {shown}",
            lambda d: number(field(d, "endpoints", "src", "received_total")) > shown,
        )
        await collector.wait_for(COUNT, within=WAIT, what="every published message")
        await wait_in(
            browser,
            f"{COUNT:,} received and confirmed",
            lambda d: (
                number(field(d, "endpoints", "src", "received_total")) >= COUNT
                and number(field(d, "endpoints", "src", "confirmed_total")) >= COUNT
            ),
        )
        replay_id = field(browser, "endpoints", "src", "positions", CHANNEL, "replay_id")
        await wait_in(
            browser,
            "the sparkline with two rate samples",
            lambda d: (
                len(
                    d.find_element(By.CSS_SELECTOR, "svg.spark polyline")
                    .get_attribute("points")
                    .split()
                )
                >= 2
            ),
        )
        assert browser.execute_script("return window.__sameDocument === true;"), "page reloaded"
        assert "updated" in browser.find_element(By.ID, "refreshed").text
        assert console_errors(browser) == []

        status = await bridge_status(bridge)
        src = status["endpoints"]["src"]
        assert src["received_total"] >= COUNT
        assert replay_id == str(src["positions"][CHANNEL]["replay_id"])
        assert (
            field(browser, "endpoints", "src", "pending_capacity") == f"{src['pending_capacity']:,}"
        )

        # Fit the viewport to the page, so the picture has no empty half and no scrollbar.
        height = browser.execute_script(
            "return Math.ceil(document.querySelector('footer').getBoundingClientRect().bottom);"
        )
        browser.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1200, "height": int(height) + 8, "deviceScaleFactor": 1, "mobile": False},
        )
        shot = tmp_path / "status-page.png"
        assert browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("UPDATE_STATUS_SCREENSHOT") == "1":
            shutil.copyfile(shot, DOCS_SCREENSHOT)


def console_errors(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


async def test_the_page_follows_status_changes_without_a_reload(browser: Any) -> None:
    """Endpoints that appear after the page loaded (workers start once RabbitMQ answers) get
    their card, and states and numbers follow /status, all in the same document."""
    from selenium.webdriver.common.by import By

    status: dict[str, Any] = {"version": "t", "ready": False, "endpoints": {}}
    runner = await start_http_server(
        "127.0.0.1", 0, CollectorRegistry(), ready=lambda: True, status=lambda: status
    )
    try:
        base = f"http://127.0.0.1:{bound_port(runner)}"
        # In a thread: the page is served by this test's own event loop.
        await asyncio.to_thread(browser.get, base + "/")
        assert "No endpoint started yet" in browser.find_element(By.ID, "main").text
        browser.execute_script("window.__sameDocument = true;")

        status["endpoints"]["late"] = {
            "state": "streaming",
            "received_total": 5,
            "positions": {"/event/A": {"replay_id": 11, "age_seconds": 1.0}},
        }
        await wait_in(
            browser,
            "the card of an endpoint that started later",
            lambda d: d.find_elements(By.CSS_SELECTOR, "[data-endpoint='late']"),
        )
        assert field(browser, "endpoints", "late", "positions", "/event/A", "replay_id") == "11"

        status["endpoints"]["late"].update(state="reconnecting", received_total=1234)
        await wait_in(
            browser,
            "the new count and state",
            lambda d: (
                field(d, "endpoints", "late", "received_total") == "1,234"
                and field(d, "endpoints", "late", "state") == "reconnecting"
            ),
        )
        badge = browser.find_element(By.CSS_SELECTOR, "[data-f='state'][data-k*='late']")
        assert "state-reconnecting" in badge.get_attribute("class").split()
        assert "state-streaming" not in badge.get_attribute("class").split()
        assert browser.execute_script("return window.__sameDocument === true;"), "page reloaded"
        assert console_errors(browser) == []
    finally:
        await runner.cleanup()


async def bridge_status(bridge: BridgeProcess) -> Any:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
        session.get(bridge.base_url + "/status", headers=headers) as resp,
    ):
        assert resp.status == 200
        return await resp.json()
