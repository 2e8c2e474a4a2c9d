"""The Sensors JS SDK (sa-sdk-javascript 1.27.11) in headless Chromium.

The page is served from ``localhost`` and the collector is addressed as
``127.0.0.1``, so every request is cross-origin and the CORS headers are
exercised as on a real site. The SDK comes from npm, installed on first use into
``.cache/npm-sajs`` (not committed).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import Collector

pytestmark = pytest.mark.browser

SDK_VERSION = "1.27.11"
CHROMIUM = "/usr/bin/chromium"
CACHE = Path(__file__).resolve().parents[2] / ".cache" / "npm-sajs"
SDK_FILE = CACHE / "node_modules" / "sa-sdk-javascript" / "dist" / "web" / "sensorsdata.js"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--no-first-run"]

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Touchline JS SDK test</title>
<script src="/static/sensorsdata.js"></script></head>
<body><p>test page</p></body></html>
"""


def _sdk_file() -> Path:
    if not SDK_FILE.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed")
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([npm, "install", "--prefix", str(CACHE), "--no-audit", "--no-fund",
                        f"sa-sdk-javascript@{SDK_VERSION}"], check=True, timeout=300,
                       capture_output=True)
    return SDK_FILE


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any, collector: Collector) -> Iterator[Any]:
    shutil.copy(_sdk_file(), collector.static_dir / "sensorsdata.js")
    (collector.static_dir / "page.html").write_text(PAGE)
    context = browser.new_context()
    pg = context.new_page()
    # A different origin from the collector's 127.0.0.1: every send is cross-origin.
    pg.goto(collector.url.replace("127.0.0.1", "localhost") + "/static/page.html")
    try:
        yield pg
    finally:
        context.close()


def init(page: Any, collector: Collector, **para: Any) -> None:
    para = {"server_url": f"{collector.url}/sa?project={collector.project}",
            "show_log": False, "is_track_single_page": False, "heatmap": None, **para}
    page.evaluate("para => { window.sensors = window.sensorsDataAnalytic201505;"
                  " sensors.init(para); }", para)


def sensors_call(page: Any, script: str) -> None:
    page.evaluate(f"() => {{ {script} }}")


def test_image_mode_track(page: Any, collector: Collector) -> None:
    init(page, collector)
    before = int(time.time() * 1000)
    sensors_call(page, "sensors.track('ViewDish', {dish: 'noodles', price: 28.5, tags: ['hot']});")
    (rec,) = collector.wait_for(1)
    assert ("GET", "/sa.gif") in collector.requests
    assert (rec.kind, rec.event, rec.link) == ("track", "ViewDish", False)
    assert rec.properties["dish"] == "noodles" and rec.properties["tags"] == ["hot"]
    assert rec.properties["$lib"] == "js" and rec.properties["$lib_version"] == SDK_VERSION
    cookie = rec.identities["cookie_id"]
    assert rec.identities == {"cookie_id": cookie, "anonymous_id": cookie}
    assert rec.distinct_id == cookie
    assert before - 1000 <= rec.time_ms <= int(time.time() * 1000) + 1000


def test_login_links_the_browser_to_the_login_id(page: Any, collector: Collector) -> None:
    init(page, collector)
    sensors_call(page, "sensors.track('Browse', {});")
    first = collector.wait_for(1)[0]
    cookie = first.distinct_id
    sensors_call(page, "sensors.login('u-9'); sensors.track('Order', {amount: 56});")
    recs = collector.wait_for(3)
    signup = next(r for r in recs if r.event == "$SignUp")
    order = next(r for r in recs if r.event == "Order")
    assert signup.link is True
    assert signup.identities["login_id"] == "u-9"
    assert cookie in signup.identities.values()
    assert (order.link, order.distinct_id, order.identities["login_id"]) == (True, "u-9", "u-9")
    assert order.identities["cookie_id"] == cookie


def test_profile_operations(page: Any, collector: Collector) -> None:
    init(page, collector)
    sensors_call(page, """
        sensors.login('u-7');
        sensors.setProfile({city: 'Shanghai'});
        sensors.setOnceProfile({first_store: 'S01'});
        sensors.incrementProfile({orders: 2});
        sensors.appendProfile({likes: ['spicy']});
        sensors.unsetProfile('city');
        sensors.deleteProfile();
    """)
    recs = collector.wait_for(7)
    # Image mode sends each record as its own parallel request: arrival order varies.
    profiles = {r.op: r.properties for r in recs if r.kind == "profile"}
    assert profiles == {"set": {"city": "Shanghai"}, "set_once": {"first_store": "S01"},
                        "increment": {"orders": 2}, "append": {"likes": ["spicy"]},
                        "unset": {"city": True}, "delete": {}}
    assert all(r.identities["login_id"] == "u-7" for r in recs if r.kind == "profile")


def test_bind_and_unbind(page: Any, collector: Collector) -> None:
    init(page, collector)
    sensors_call(page, "sensors.bind('$identity_mobile', '13800000000');")
    (bind,) = collector.wait_for(1)
    assert (bind.kind, bind.link, bind.identities["mobile"]) == ("link", True, "13800000000")
    sensors_call(page, "sensors.unbind('$identity_mobile', '13800000000');")
    unbind = collector.wait_for(2)[1]
    assert (unbind.kind, unbind.identities) == ("unlink", {"mobile": "13800000000"})


@pytest.mark.parametrize("mode", ["ajax", "beacon"])
def test_ajax_and_beacon_modes(page: Any, collector: Collector, mode: str) -> None:
    init(page, collector, send_type=mode)
    page.evaluate("mode => sensors.track('Tap', {mode: mode})", mode)
    (rec,) = collector.wait_for(1)
    assert rec.properties["mode"] == mode
    assert ("POST", "/sa.gif") in collector.requests


def test_batch_send(page: Any, collector: Collector) -> None:
    init(page, collector, batch_send={"send_interval": 500, "datasend_timeout": 3000})
    sensors_call(page, "for (var i = 0; i < 5; i++) { sensors.track('Tick', {seq: i}); }")
    recs = collector.wait_for(5)
    assert sorted(r.properties["seq"] for r in recs if r.event == "Tick") == [0, 1, 2, 3, 4]
    assert ("POST", "/sa.gif") in collector.requests
    assert len({r.event_id for r in recs}) == len(recs)
    # The SDK keeps the batch in localStorage until a 2xx: it must be gone now.
    time.sleep(1.0)
    assert len(collector.records()) == len(recs)


def test_debug_mode_reports_valid_data(page: Any, collector: Collector) -> None:
    dialogs: list[str] = []

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    init(page, collector, debug_mode=True, debug_mode_upload=True)
    sensors_call(page, "sensors.track('Checked', {ok: 1});")
    deadline = time.monotonic() + 10
    while not dialogs and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    assert dialogs and dialogs[0].startswith("debug\u6570\u636e\u53d1\u9001\u6210\u529f")
    assert ("GET", "/debug") in collector.requests
