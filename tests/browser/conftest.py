"""Browser tests: Debian's headless Chromium driven by Playwright against a live server.

Playwright's own browser download is not used: the tests launch the system Chromium
(``/usr/bin/chromium``, or ``RECOMMENDER_CHROMIUM``) and skip, saying why, where it is
missing (CI installs it and fails on any skip). Screenshots go to
``test-artifacts/screenshots/`` (git-ignored).
"""

import os
import shutil
import time
from pathlib import Path

import pytest
from django.conf import settings

CHROMIUM = os.environ.get("RECOMMENDER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(settings.BASE_DIR) / "test-artifacts" / "screenshots"
# Where the documentation's screenshots are written when asked for
# (``RECOMMENDER_SCREENSHOTS=docs/screenshots``); unset, the docs' own PNGs are left alone.
DOCS_SCREENSHOTS = os.environ.get("RECOMMENDER_SCREENSHOTS", "")
VIEWPORTS = {"desktop": {"width": 1280, "height": 800}, "mobile": {"width": 390, "height": 844}}
TIMEOUT_MS = 30_000


@pytest.fixture(scope="package")
def browser():
    """One Chromium for this package's tests, stopped after them (see the note on its loop)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("The playwright package is not installed (pip install -r requirements.txt).")
    executable = shutil.which(CHROMIUM)
    if executable is None:
        pytest.skip(
            f"No Chromium at {CHROMIUM}: install Debian's (apt-get install chromium) "
            "or point RECOMMENDER_CHROMIUM at one."
        )
    # Playwright's sync API runs an event loop in this thread while it is started, which
    # Django takes for an async context; the tests' own ORM calls are plain sync code.
    # Both last only as long as this package's tests.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    playwright = sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
    finally:
        playwright.stop()
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def page(browser, live_server):
    """A fresh browser profile (no cookies) at desktop size, its base URL the live server."""
    context = browser.new_context(base_url=live_server.url, viewport=VIEWPORTS["desktop"])
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.js_errors = errors
    yield page
    context.close()


def wait_until(check, *, timeout=20.0, interval=0.1, message="condition"):
    """Poll ``check()`` (e.g. a database query) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"Timed out after {timeout}s waiting for {message}.")
        time.sleep(interval)


# Every <img> loaded (lazy ones told to load now), and whether any is broken.
LOAD_IMAGES = """async () => {
  const images = Array.from(document.images);
  images.forEach((img) => { img.loading = "eager"; });
  await Promise.all(images.map((img) => img.complete ? null : new Promise((done) => {
    img.addEventListener("load", done, { once: true });
    img.addEventListener("error", done, { once: true });
    setTimeout(done, 10000);  // still loading after 10 s: reported as not loaded
  })));
  return images.filter((img) => !(img.naturalWidth > 0)).map((img) => img.currentSrc || img.src);
}"""
# How wide the document is, and the outermost elements that stick out to the right.
OVERFLOW = """() => {
  const edge = window.innerWidth + 1;
  const name = (el) => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") +
    (typeof el.className === "string" && el.className ? "." + el.className.trim().split(/\\s+/).join(".") : "");
  return {
    scrollWidth: document.scrollingElement.scrollWidth,
    innerWidth: window.innerWidth,
    outermost: Array.from(document.querySelectorAll("body *"))
      .filter((el) => el.getBoundingClientRect().right > edge && el.parentElement.getBoundingClientRect().right <= edge)
      .slice(0, 5).map((el) => name(el) + " in " + name(el.parentElement) + " right=" + Math.round(el.getBoundingClientRect().right)),
  };
}"""


def check_and_capture(page, name):
    """At a desktop and a mobile width: no broken image, no sideways scrolling; save PNGs.

    Leaves the page at the desktop size.
    """
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for viewport, size in [("mobile", VIEWPORTS["mobile"]), ("desktop", VIEWPORTS["desktop"])]:
        page.set_viewport_size(size)
        broken = page.evaluate(LOAD_IMAGES)
        page.screenshot(path=str(SCREENSHOTS / f"{name}-{viewport}.png"), full_page=True)
        assert not broken, f"{name} ({viewport}): images that did not load: {broken}"
        overflow = page.evaluate(OVERFLOW)
        assert overflow["scrollWidth"] <= overflow["innerWidth"], (
            f"{name} ({viewport}) scrolls sideways: {overflow}"
        )


def save_docs_screenshot(page, name, until=None):
    """Write ``<name>.png`` for the documentation into RECOMMENDER_SCREENSHOTS, if it is set.

    The page from its top, down to the bottom of the ``until`` element (else all of it).
    """
    if not DOCS_SCREENSHOTS:
        return None
    folder = Path(DOCS_SCREENSHOTS)
    if not folder.is_absolute():
        folder = Path(settings.BASE_DIR) / folder
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    clip = None
    if until is not None:
        box = page.locator(until).bounding_box()
        width = page.evaluate("document.documentElement.clientWidth")
        clip = {"x": 0, "y": 0, "width": width, "height": box["y"] + box["height"] + 16}
    page.screenshot(path=str(path), full_page=True, clip=clip)
    return path


def sign_in_to_admin(page, username="operator", password="correct horse battery staple"):
    """A superuser named ``username`` signed in to the admin in ``page`` (made here)."""
    from django.contrib.auth import get_user_model

    get_user_model().objects.create_superuser(username, f"{username}@example.com", password)
    page.goto("/admin/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    with page.expect_navigation():
        page.click("input[type=submit]")
