"""Drive Debian's chromium with Playwright (no downloaded browser); print one JSON line."""

import json
import sys

from playwright.sync_api import sync_playwright

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def check_report(page, url):
    page.goto(url)
    page.wait_for_load_state("load")
    loaded = page.evaluate(
        "Array.from(document.images).filter(i => i.complete && i.naturalWidth > 100).length")
    first = "#per-image tbody tr td:nth-child(3)"
    page.click("#per-image th[data-col='2']")
    asc = page.eval_on_selector_all(first, "els => els.map(e => parseFloat(e.textContent))")
    page.click("#per-image th[data-col='2']")
    desc = page.eval_on_selector_all(first, "els => els.map(e => parseFloat(e.textContent))")
    return {"images_loaded": loaded, "sorted_ascending": asc == sorted(asc),
            "sorted_descending": desc == sorted(desc, reverse=True)}


def check_demo(page, url, image_path):
    page.goto(url)
    page.set_input_files("#file", image_path)
    # a selector, not a JS predicate: the page's CSP forbids the eval a predicate needs
    page.wait_for_selector("#stats[data-ready='1']", state="attached", timeout=60000)
    result = {"overlay_pixels": page.evaluate("window.bussegOverlayPixels()"),
              "stats": page.inner_text("#stats"),
              "threshold_shown": page.inner_text("#thr-value")}
    page.click("#plain")  # the plain output: the page asks the server again
    page.wait_for_selector("#stats[data-ready='1']", state="attached", timeout=60000)
    result.update(plain_overlay_pixels=page.evaluate("window.bussegOverlayPixels()"),
                  plain_stats=page.inner_text("#stats"),
                  plain_threshold_shown=page.inner_text("#thr-value"))
    return result


def main() -> None:
    kind, url = sys.argv[1], sys.argv[2]
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        result = check_report(page, url) if kind == "report" else check_demo(page, url,
                                                                               sys.argv[3])
        browser.close()
    result["console_errors"] = errors
    print(json.dumps(result))


if __name__ == "__main__":
    main()
