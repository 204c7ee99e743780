"""--heavy-report-html: a self-contained file (no network), and what a real headless browser renders of it.

The browser check drives Debian's ``chromium`` through Selenium and ``chromium-driver`` (CI installs both
in .ci/run); where either is missing it is skipped with the reason.
"""

import json
import re
import shutil

import pytest

# Generated sessions: no cache, and in file order even where pytest-randomly is installed (the tests of a
# generated module build on each other: what one allocates, the next one's figures start from).
NO_SHUFFLE = ("-p", "no:cacheprovider", "-p", "no:randomly")

SUITE = """
import os, time, pytest
pytestmark = pytest.mark.requires_heavy_ram
_KEEP = []

def test_loads_96_mib():
    _KEEP.append(b"\\x01" * (96 << 20))
    time.sleep(0.3)

def test_fails():
    time.sleep(0.2)
    assert False, "on purpose"

def test_after():
    time.sleep(0.2)
"""


def report(pytester: pytest.Pytester, *args: str) -> str:
    pytester.makepyfile(test_first=SUITE, test_second=SUITE)
    result = pytester.runpytest_subprocess("--heavy-isolate", "always", "--heavy-report-html", "report.html",
                                           *NO_SHUFFLE, *args)
    result.assert_outcomes(passed=4, failed=2)
    return (pytester.path / "report.html").read_text(encoding="utf-8")


def test_html_report_is_self_contained_with_a_timeline_per_module(heavy_pytester):
    text = report(heavy_pytester)
    assert text.startswith("<!DOCTYPE html>")
    # nothing fetched from anywhere: no script, stylesheet link, image source or URL at all
    for needle in ("<script", "<link", "src=", "http://", "https://", "@import", "url("):
        assert needle not in text, needle
    assert text.count('<svg class="timeline"') == 2
    assert text.count('<rect class="test failed"') == 2 and text.count('<rect class="test"') == 4
    assert text.count('<polyline class="rss"') == 2 and '<polyline class="gpu"' not in text
    assert text.count('<line class="boundary"') == 6
    for module in ("test_first.py", "test_second.py"):
        assert f"<h2>{module}</h2>" in text
        assert f"<td>{module}</td>" in text  # its heavy-table row
    assert re.search(r"<title>test_first.py::test_fails \(failed\): RSS [\d,]+ MiB at setup start", text)


def test_html_report_draws_gpu_memory_from_nvml(fake_gpu):
    fake_gpu.makepyfile(test_gpu="""
import os, pynvml, pytest
pytestmark = pytest.mark.requires_heavy_ram
def test_context(): pynvml.fake_create_context(os.getpid(), 0, used_mib=2048)
""")
    result = fake_gpu.runpytest_subprocess("-p", "pynvml", "--heavy-isolate", "always",
                                           "--heavy-report-html", "gpu.html", *NO_SHUFFLE)
    result.assert_outcomes(passed=1)
    text = (fake_gpu.path / "gpu.html").read_text(encoding="utf-8")
    assert '<polyline class="gpu"' in text
    assert "GPU peak 2,048 MiB" in text


def browser() -> tuple[str, str]:
    """(chromium, chromedriver) paths, or skip saying which is missing."""
    pytest.importorskip("selenium", reason="selenium is not installed (pip install selenium)")
    found = {name: shutil.which(name) for name in ("chromium", "chromedriver")}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        pytest.skip(f"no headless browser: {' and '.join(missing)} not on PATH "
                    "(Debian: apt-get install chromium chromium-driver)")
    return found["chromium"] or "", found["chromedriver"] or ""


def test_html_report_renders_in_headless_chromium(heavy_pytester, tmp_path):
    chromium, chromedriver = browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    report(heavy_pytester)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1100,1600"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    try:
        driver.get((heavy_pytester.path / "report.html").as_uri())
        assert driver.title == "pytest-heavy memory report"
        timelines = driver.find_elements(By.CSS_SELECTOR, "svg.timeline")
        assert len(timelines) == 2
        for svg in timelines:
            assert svg.size["width"] == 960 and svg.size["height"] == 240
            # the RSS line was laid out with real extent: the browser parsed and drew the points
            box = driver.execute_script("return arguments[0].querySelector('polyline.rss').getBBox();", svg)
            assert box["width"] > 100 and box["height"] > 1
        failed = driver.find_elements(By.CSS_SELECTOR, "rect.test.failed")
        assert len(failed) == 2
        for rect in failed:
            assert rect.value_of_css_property("fill") == "rgb(214, 39, 40)"
            assert rect.size["width"] > 1
        bad_rows = driver.find_elements(By.CSS_SELECTOR, "table.tests tr.bad")
        assert [row.find_element(By.TAG_NAME, "td").text for row in bad_rows] == ["test_fails", "test_fails"]
        shot = tmp_path / "report.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    finally:
        driver.quit()


def test_timeline_of_a_child_is_sampled_from_outside_so_a_gil_holding_call_leaves_no_gap(heavy_pytester):
    heavy_pytester.makepyfile(test_gil="""
import hashlib, pytest
pytestmark = pytest.mark.requires_heavy_ram
_KEEP = []

def test_one_long_c_call():
    _KEEP.append(hashlib.shake_128(b"seed").digest(960 << 20))  # holds the GIL throughout (~2 s when idle)
""")
    result = heavy_pytester.runpytest_subprocess("--heavy-isolate", "always", "--heavy-report-html=gil.html",
                                                 "--heavy-report=gil.json", *NO_SHUFFLE)
    result.assert_outcomes(passed=1)
    [test] = json.loads((heavy_pytester.path / "gil.json").read_text())["tests"]
    text = (heavy_pytester.path / "gil.html").read_text(encoding="utf-8")
    [points] = re.findall(r'<polyline class="rss" points="([^"]*)"', text)
    # the child's own thread waited for the GIL; the parent's monitor kept sampling the child
    assert len(points.split()) >= len(test["samples"]) + 5, (len(points.split()), test["samples"])
