"""The usage report in a real headless browser (Debian's chromium, through chromedriver).

The page is made by a real session against a real baseline, opened from a file: URL
with the network off, and checked as a user sees it: it renders, the chart has one bar
per test, and a click on a column header sorts the table (again: the other way).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import needs


@pytest.fixture
def _writable_cgroups() -> None:
    from hostcheck import cgroups_writable

    from conftest import needs

    needs(cgroups_writable(), "lacks: a writable cgroup (root, or a delegated v2 subtree): "
          "memory peaks and limits come from it")


needs_cgroups = pytest.mark.usefixtures("_writable_cgroups")

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")

SUITE = """
import pytest

def touch(mib):
    data = bytearray(mib << 20)
    for i in range(0, len(data), 4096):
        data[i] = 1

@pytest.mark.nsbox
def test_small():
    touch(5)

@pytest.mark.nsbox
def test_large():
    touch({large})

@pytest.mark.nsbox
def test_medium():
    touch(20)
"""


@pytest.fixture
def browser() -> Iterator[Any]:
    needs(CHROMIUM is not None and CHROMEDRIVER is not None,
          "lacks: chromium (apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        needs(False, "lacks: selenium (pip install -e '.[test]')")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tempfile.mkdtemp(prefix="nsbox-chromium-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1400,900",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)),
                              options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def column(driver: Any, index: int) -> list[str]:
    return [str(value) for value in driver.execute_script(
        "return Array.from(document.querySelectorAll('#tests tbody tr'))"
        ".map(r => r.cells[arguments[0]].getAttribute('data-sort'))", index)]


@needs_cgroups
def test_the_report_renders_charts_and_sorts(pytester: pytest.Pytester, run_inner,
                                             browser: Any) -> None:
    from selenium.webdriver.common.by import By

    pytester.makepyfile(test_page=SUITE.format(large=40))
    run_inner("--nsbox-usage-save=base.json").assert_outcomes(passed=3)
    pytester.makepyfile(test_page=SUITE.format(large=70))
    result = run_inner("--nsbox-usage-compare=base.json", "--nsbox-usage-report=usage.html",
                       "--nsbox-usage-fail=cpu:off,wall:off,tasks:off")
    assert result.ret == 1
    browser.get((pytester.path / "usage.html").as_uri())
    assert browser.title == "pytest-nsbox usage"
    assert browser.find_element(By.TAG_NAME, "h1").text == "pytest-nsbox usage"
    bars = browser.find_elements(By.CSS_SELECTOR, "svg#chart g.bar")
    assert len(bars) == 3
    tests = {bar.get_attribute("data-test") for bar in bars}
    assert tests == {f"test_page.py::test_{n}" for n in ("small", "large", "medium")}
    over = browser.find_elements(By.CSS_SELECTOR, "svg#chart g.bar.over")
    assert [bar.get_attribute("data-test") for bar in over] == ["test_page.py::test_large"]
    widths = {bar.get_attribute("data-test"): float(bar.find_element(
        By.CSS_SELECTOR, "rect.mem").get_attribute("width")) for bar in bars}
    assert widths["test_page.py::test_large"] > widths["test_page.py::test_medium"] > \
        widths["test_page.py::test_small"] > 0
    assert browser.execute_script(
        "return document.querySelectorAll('[src], link[href]').length") == 0

    headers = browser.find_elements(By.CSS_SELECTOR, "#tests thead th")
    names = [header.text for header in headers]
    memory = names.index("Memory peak")
    headers[memory].click()
    ascending = [float(value) for value in column(browser, memory)]
    assert ascending == sorted(ascending) and len(ascending) == 3
    assert headers[memory].get_attribute("aria-sort") == "ascending"
    headers[memory].click()
    descending = [float(value) for value in column(browser, memory)]
    assert descending == sorted(ascending, reverse=True)
    headers[0].click()  # by test name, as text
    assert column(browser, 0) == sorted(column(browser, 0))
    assert column(browser, 0)[0] == "test_page.py::test_large"
    row = browser.find_element(By.CSS_SELECTOR, "#tests tbody tr.over")
    assert row.get_attribute("data-test") == "test_page.py::test_large"
    assert "memory regressed" in row.text


WIDE_SUITE = """
import pytest

def touch(mib):
    data = bytearray(mib << 20)
    for i in range(0, len(data), 4096):
        data[i] = 1

@pytest.mark.nsbox(memory="200M", pids=64, timeout=60)
@pytest.mark.parametrize("proxy", ["http_proxy_with_basic_authentication", "socks5h"])
def test_reach_internet_through_the_configured_proxy_and_retry_with_backoff(proxy):
    touch({grows})

@pytest.mark.nsbox
def test_small():
    touch(5)

@pytest.mark.nsbox
def test_medium():
    touch(20)
"""

#: every text piece between two break chances of a test-name cell on one line (a name
#: broken inside a word puts one piece on two lines)
PIECES_ON_ONE_LINE = """
const out = [];
for (const row of document.querySelectorAll('#tests tbody tr')) {
  const walker = document.createTreeWalker(row.cells[0], NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const range = document.createRange();
    range.selectNodeContents(node);
    const tops = new Set(Array.from(range.getClientRects()).map(r => Math.round(r.top)));
    if (tops.size > 1) { out.push(node.textContent); }
  }
}
return out;
"""


@needs_cgroups
def test_the_report_fits_1400_px_wraps_names_between_words_and_sorts(
        pytester: pytest.Pytester, run_inner, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    pytester.makepyfile(test_a_rather_long_module_name_for_network_reachability_checks=(
        WIDE_SUITE.format(grows=10)))
    run_inner("--nsbox-usage-save=base.json").assert_outcomes(passed=4)
    pytester.makepyfile(test_a_rather_long_module_name_for_network_reachability_checks=(
        WIDE_SUITE.format(grows=30)))
    run_inner("--nsbox-usage-compare=base.json", "--nsbox-usage-report=usage.html",
              "--nsbox-usage-warn-only")
    browser.set_window_size(1400, 900)
    browser.get((pytester.path / "usage.html").as_uri())
    width = browser.execute_script("return window.innerWidth")
    assert 1380 <= width <= 1400, width
    overflow = browser.execute_script(
        "const s = document.querySelector('.scroll');"
        "return [document.documentElement.scrollWidth, window.innerWidth,"
        " s.scrollWidth, s.clientWidth]")
    assert overflow[0] <= overflow[1] and overflow[2] <= overflow[3], overflow
    broken = browser.execute_script(PIECES_ON_ONE_LINE)
    assert broken == [], f"test names broken inside a word: {broken}"
    lines = browser.execute_script(
        "return Array.from(document.querySelectorAll('#tests tbody tr')).map(r => {"
        " const range = document.createRange(); range.selectNodeContents(r.cells[0]);"
        " return new Set(Array.from(range.getClientRects()).map(x => Math.round(x.top))).size"
        "})")
    assert max(lines) >= 2, f"the long names fit on one line: nothing is shown ({lines})"

    bars = browser.find_elements(By.CSS_SELECTOR, "svg#chart g.bar")
    rows = browser.find_elements(By.CSS_SELECTOR, "#tests tbody tr")
    names = [bar.get_attribute("data-test") for bar in bars]
    assert len(bars) == len(set(names)) == len(rows) == 4
    assert set(names) == {row.get_attribute("data-test") for row in rows}

    saved = json.loads((pytester.path / "base.json").read_text())["tests"].values()
    headers = [h.text.replace("\n", " ") for h in
               browser.find_elements(By.CSS_SELECTOR, "#tests thead th")]
    for title, key in (("IO read", "io_read_bytes"), ("IO written", "io_write_bytes")):
        assert (title in headers) == any(row.get(key) is not None for row in saved), headers

    cpu = headers.index("CPU s")
    heads = browser.find_elements(By.CSS_SELECTOR, "#tests thead th")
    heads[cpu].click()
    values = [float(value) for value in column(browser, cpu)]
    assert values == sorted(values)
    heads[cpu].click()
    assert [float(value) for value in column(browser, cpu)] == sorted(values, reverse=True)
