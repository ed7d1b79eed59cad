"""The admin's cluster dashboard: its data feed in process, and the page in a real browser
(Debian's Chromium, headless, through Selenium) against live nodes."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from django.test import Client

from tests.cluster import Cluster
from tests.processes import Registry, manage, wait_for

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
NONE = "\u2013"  # what the page shows for "no figure yet" (an en dash)


def test_the_feed_lists_every_node_for_staff_only(admin_client: Client, db: None) -> None:
    from nodes.models import Node

    Node.objects.create(name="n1", url="http://127.0.0.1:1", status="up")
    answer = admin_client.get("/admin/dashboard/data")
    assert answer.status_code == 200
    [row] = answer.json()["nodes"]
    assert row["name"] == "n1"
    assert row["status"] == "up"
    assert set(row) >= {"hit_ratio", "ops", "p99_ms", "items", "bytes", "max_bytes", "share"}
    assert Client().get("/admin/dashboard/data").status_code == 302  # to the login page
    assert b"Cluster dashboard" in admin_client.get("/admin/").content
    page = admin_client.get("/admin/dashboard/")
    assert page.status_code == 200
    assert b'id="nodes"' in page.content


def _browser_installed() -> bool:
    """Chromium and chromedriver, installed from Debian's packages when missing."""
    if shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER):
        return True
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (
        ["apt-get", "install", "-y", "-q", "chromium", "chromium-driver"],
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "chromium", "chromium-driver"],
    ):
        try:
            subprocess.run(argv, env=env, capture_output=True, timeout=600, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return False
        if shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER):
            return True
    return False


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, str]]:
    if not _browser_installed():
        pytest.skip("Debian's chromium and chromium-driver are missing and could not be installed")
    log_dir = tmp_path_factory.mktemp("dashboard")
    registry = Registry(f"sqlite:///{log_dir / 'registry.sqlite3'}")
    env = {**registry.env, "DJANGO_SUPERUSER_PASSWORD": "dash-board-pass"}
    manage(env, "createsuperuser", "--noinput", "--username", "boss", "--email", "boss@example.com")
    with Cluster(registry, log_dir, 2) as cluster:
        yield cluster, "dash-board-pass"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.mark.integration
def test_the_dashboard_shows_live_nodes_in_a_browser(
    live: tuple[Cluster, str], browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    cluster, password = live
    n1 = cluster.nodes[0]
    browser.get(f"{n1.url}/admin/login/?next=/admin/")
    browser.find_element(By.NAME, "username").send_keys("boss")
    browser.find_element(By.NAME, "password").send_keys(password)
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait_for(lambda: "Log out" in browser.page_source or "logout" in browser.page_source)
    browser.find_element(By.LINK_TEXT, "Cluster dashboard").click()

    def rows() -> dict[str, list[str]]:
        found = {}
        for row in browser.find_elements(By.CSS_SELECTOR, "#nodes tbody tr"):
            found[row.get_attribute("data-node")] = [
                c.text for c in row.find_elements(By.TAG_NAME, "td")
            ]
        return found

    wait_for(lambda: set(rows()) == {"n1", "n2"}, timeout=20)
    assert all(cells[1] == "up" for cells in rows().values())
    # Traffic: the ops/s column turns into a number at the next refresh, and the chart moves.
    session = requests.Session()
    session.headers["X-API-Key"] = cluster.registry.api_key
    for i in range(50):
        session.put(f"{n1.url}/api/v1/keys/d{i}", json={"value": i}, timeout=5)
    wait_for(lambda: any(cells[3] not in (NONE, "0") for cells in rows().values()), timeout=20)
    points = browser.find_element(By.ID, "line").get_attribute("points")
    assert len(points.split()) >= 2
    items = sum(int(cells[5]) for cells in rows().values() if cells[5].isdigit())
    assert items >= 100  # 50 keys, two copies each
    assert "MiB" in rows()["n1"][6]
    # The screenshot in docs/ (README, Admin) comes from here: DASHBOARD_SCREENSHOT=docs/...
    shot = Path(os.environ.get("DASHBOARD_SCREENSHOT") or tmp_path / "dashboard.png")
    browser.set_window_size(1200, 700)
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
