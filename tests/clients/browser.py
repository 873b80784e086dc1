#!/usr/bin/env python3
"""Loads pages in a real headless Chromium (Debian `chromium` + `chromium-driver`, driven by Selenium) for tollgate's
integration tests and screenshots: the web console on the admin listener, and pages served through the proxy.

Usage: browser.py --url URL [--url URL ...] [options]
  --url URL            a page to load (several: loaded in order, in one browser)
  --cookie NAME=VALUE  a cookie set for each URL's origin before it is loaded (HttpOnly, SameSite=Strict);
                       repeatable
  --header 'NAME: VALUE'
                       an extra request header sent with every request (repeatable)
  --proxy URL          send the browser's requests through this proxy (e.g. http://127.0.0.1:3128); Chromium
                       never proxies loopback addresses, so a page at a reserved name (http://tollgate.internal/)
                       goes through it, a page at 127.0.0.1 does not
  --wait-for CSS       wait until an element matches (default: body[data-ready], which the console sets once a page
                       has drawn; pass 'body' for pages that set nothing)
  --wait-gone CSS      then wait until no element matches (e.g. '.loading')
  --click CSS          on a page where an element matches once it is ready: click it, then wait until
                       --wait-after-click CSS matches (e.g. the console's reload button and its result)
  --wait-after-click CSS
  --screenshot-dir DIR save DIR/NAME.png per page, NAME from --name (in order) or the URL's last path segment
  --name NAME          the screenshot name of each URL, in order (repeatable)
  --width W --height H the window (default 1280x900)
  --timeout SECONDS    per page (default 20)

Prints one JSON object and exits 0 when every page loaded, became ready and logged no console errors, else 1:
  {"ok": bool, "pages": [{"url", "title", "ready": bool, "console_errors": [messages of level SEVERE],
    "charts": number of canvas or svg charts, "charts_with_data": of those, how many draw at least one value,
    "chart_points": values drawn, "painted_canvases": canvases with visible pixels, "screenshot": path or null,
    "text": the first 2000 characters of the page's text, "clicked": the --click selector when it was clicked}]}

Environment: TOLLGATE_CHROMIUM (default /usr/bin/chromium), TOLLGATE_CHROMEDRIVER (default /usr/bin/chromedriver).
Selenium Manager is never asked to download anything (SE_OFFLINE).
"""

import argparse
import json
import os
import sys
from urllib.parse import urlsplit

os.environ.setdefault("SE_OFFLINE", "true")

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import TimeoutException, WebDriverException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

# Counts the charts on the page and what they draw: Chart.js charts (window.Chart.getChart) and any svg chart.
CHARTS_SCRIPT = """
const result = {charts: 0, charts_with_data: 0, chart_points: 0, painted_canvases: 0};
for (const canvas of document.querySelectorAll('canvas')) {
  result.charts += 1;
  const chart = window.Chart && window.Chart.getChart ? window.Chart.getChart(canvas) : null;
  let points = 0;
  if (chart) {
    for (const dataset of chart.data.datasets) {
      points += dataset.data.filter((value) => value !== null && value !== undefined && Number(value) !== 0).length;
    }
  }
  result.chart_points += points;
  if (points > 0) result.charts_with_data += 1;
  try {
    const context = canvas.getContext('2d');
    const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
    for (let index = 3; index < pixels.length; index += 4 * 7) {
      if (pixels[index] !== 0) { result.painted_canvases += 1; break; }
    }
  } catch (error) { /* a tainted or webgl canvas: not counted as painted */ }
}
for (const svg of document.querySelectorAll('svg')) {
  if (svg.querySelector('path, rect, circle, polyline')) { result.charts += 1; result.charts_with_data += 1; }
}
return result;
"""


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", action="append", required=True)
    parser.add_argument("--cookie", action="append", default=[])
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--proxy")
    parser.add_argument("--wait-for", default="body[data-ready]")
    parser.add_argument("--wait-gone")
    parser.add_argument("--click")
    parser.add_argument("--wait-after-click")
    parser.add_argument("--screenshot-dir")
    parser.add_argument("--name", action="append", default=[])
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=900)
    parser.add_argument("--timeout", type=float, default=20.0)
    return parser.parse_args()


def start_browser(args):
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("TOLLGATE_CHROMIUM", "/usr/bin/chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--no-first-run", "--disable-extensions", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--force-device-scale-factor=1",
                 "--hide-scrollbars", f"--window-size={args.width},{args.height}"):
        options.add_argument(flag)
    if args.proxy:
        options.add_argument(f"--proxy-server={args.proxy}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=os.environ.get("TOLLGATE_CHROMEDRIVER", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(args.timeout)
    driver.execute_cdp_cmd("Network.enable", {})
    headers = {}
    for header in args.header:
        name, _, value = header.partition(":")
        headers[name.strip()] = value.strip()
    if headers:
        driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": headers})
    return driver


def set_cookies(driver, url, cookies):
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}/"
    for cookie in cookies:
        name, _, value = cookie.partition("=")
        driver.execute_cdp_cmd("Network.setCookie", {
            "name": name, "value": value, "url": origin, "path": "/", "httpOnly": True, "sameSite": "Strict",
        })


def load(driver, args, url, name):
    page = {"url": url, "title": None, "ready": False, "console_errors": [], "charts": 0, "charts_with_data": 0,
            "chart_points": 0, "painted_canvases": 0, "screenshot": None, "text": "", "clicked": None}
    driver.get_log("browser")  # what earlier pages logged is theirs
    try:
        driver.get(url)
        WebDriverWait(driver, args.timeout).until(
            lambda d: d.execute_script("return document.querySelector(arguments[0]) !== null", args.wait_for))
        if args.wait_gone:
            WebDriverWait(driver, args.timeout).until(
                lambda d: d.execute_script("return document.querySelector(arguments[0]) === null", args.wait_gone))
        if args.click and driver.execute_script("return document.querySelector(arguments[0]) !== null", args.click):
            driver.execute_script("document.querySelector(arguments[0]).click()", args.click)
            page["clicked"] = args.click
            if args.wait_after_click:
                WebDriverWait(driver, args.timeout).until(lambda d: d.execute_script(
                    "return document.querySelector(arguments[0]) !== null", args.wait_after_click))
        # Charts draw in the frame after the data arrived.
        driver.execute_async_script("requestAnimationFrame(() => requestAnimationFrame(arguments[0]))")
        page["ready"] = True
    except (TimeoutException, WebDriverException) as error:
        page["console_errors"].append(f"not ready: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
    page["title"] = driver.title
    page.update(driver.execute_script(CHARTS_SCRIPT))
    page["text"] = driver.execute_script("return document.body ? document.body.innerText : ''")[:2000]
    if args.screenshot_dir:
        os.makedirs(args.screenshot_dir, exist_ok=True)
        path = os.path.join(args.screenshot_dir, f"{name}.png")
        driver.save_screenshot(path)
        page["screenshot"] = path
    page["console_errors"] += [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    return page


def main():
    args = parse_args()
    names = args.name + [None] * (len(args.url) - len(args.name))
    driver = start_browser(args)
    pages = []
    try:
        for url, name in zip(args.url, names):
            set_cookies(driver, url, args.cookie)
            if name is None:
                name = urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1] or "index"
            pages.append(load(driver, args, url, name))
    finally:
        driver.quit()
    ok = all(page["ready"] and not page["console_errors"] for page in pages)
    print(json.dumps({"ok": ok, "pages": pages}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
