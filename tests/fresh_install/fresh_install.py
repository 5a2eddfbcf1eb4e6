"""A new store adopts the recommender by following docs/install.md, read from the page.

In a temporary folder: build this package's wheel, make a clean virtualenv and a new
Django project (``yourproject``, app ``shop``, a UUID-keyed ``Product``), then run every
block of docs/install.md (and the page template of docs/template-tags.md) marked
``<!-- fresh-install: ACTION [PATH] -->`` as written:

    run             a shell block, run in the project folder
    write PATH      the block becomes that file
    append PATH     the block is added at the end of that file
    torch           the torch install; offline CI installs FRESH_INSTALL_TORCH instead
                    (default torch==2.13.0, a CPU wheel on this machine's disk; set it to
                    "docs" to run the page's command as written)
    package         the package install, run in the folder holding the built wheel
    train           the first training, run after events were recorded

Then, against ``manage.py runserver``: anonymous shoppers record events over HTTP with
their CSRF token, the first model is trained, the home page renders a carousel from it,
and the API's ``schema/`` and ``docs/`` answer with every asset they load on the site
itself. No ``nvidia-*`` package may be installed. Exits non-zero, saying what failed.
Standard library only: it runs before anything is installed.
"""

import http.cookiejar
import json
import os
import random
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "docs" / "install.md", ROOT / "docs" / "template-tags.md"]
MARKER = re.compile(r"^<!-- fresh-install: (\w+)(?: (\S+))? -->\n```\w*\n(.*?)^```$", re.M | re.S)
TORCH = os.environ.get("FRESH_INSTALL_TORCH", "torch==2.13.0")
STARTED = time.monotonic()

# The store's own code: what a store has before it adopts the recommender.
PRODUCT_MODEL = """import uuid

from django.db import models


class Category(models.Model):
    name = models.CharField(max_length=100)

    def __str__(self):
        return self.name


class Product(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200)
    category = models.ForeignKey(Category, on_delete=models.PROTECT)
    active = models.BooleanField(default=True)
    stock = models.PositiveIntegerField(default=10)

    def __str__(self):
        return self.name

    def get_absolute_url(self):
        return f"/products/{self.pk}/"
"""
STORE_SETTINGS = '\nINSTALLED_APPS += ["shop"]\n'
STORE_URLS = """
from django.views.generic import TemplateView

urlpatterns += [path("", TemplateView.as_view(template_name="shop/home.html"))]
"""
SEED = """
from shop.models import Category, Product
for c in range(3):
    category = Category.objects.create(name=f"Category {c}")
    for i in range(10):
        Product.objects.create(name=f"Product {c * 10 + i}", category=category)
"""
N_SHOPPERS, EVENTS_EACH = 40, 12


def say(message):
    print(f"[fresh-install {time.monotonic() - STARTED:6.1f}s] {message}", flush=True)


def fail(message):
    say(f"FAILED: {message}")
    sys.exit(1)


def doc_blocks():
    blocks = []
    for page in PAGES:
        found = MARKER.findall(page.read_text())
        if not found:
            fail(f"no fresh-install blocks in {page}")
        blocks += [(action, path, body) for action, path, body in found]
    return blocks


def run(command, *, cwd, env, shell=False):
    shown = command if shell else " ".join(map(str, command))
    say("$ " + shown.strip().replace("\n", " ⏎ ")[:160])
    done = subprocess.run(command, cwd=cwd, env=env, shell=shell, text=True, capture_output=True)
    if done.returncode != 0:
        print(done.stdout[-4000:], done.stderr[-4000:], sep="\n")
        fail(f"exit {done.returncode}: {shown}")
    return done.stdout


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Shopper:
    """One browser: its own cookies (session, CSRF) against the store."""

    def __init__(self, base):
        self.base = base
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))

    def get(self, path):
        try:
            with self.opener.open(self.base + path, timeout=60) as response:
                return response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")

    def post_json(self, path, payload, *, csrf=True):
        headers = {"Content-Type": "application/json"}
        token = next((c.value for c in self.cookies if c.name == "csrftoken"), None)
        if csrf and token:
            headers["X-CSRFToken"] = token
        request = urllib.request.Request(
            self.base + path, data=json.dumps(payload).encode(), headers=headers, method="POST"
        )
        try:
            with self.opener.open(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")


def local_assets(shopper, html, page):
    """Every file a page loads (script, style sheet, icon) is on the site and answers 200;
    no link or address on it points elsewhere."""
    loaded = re.findall(r'<(?:script|img)[^>]*\ssrc=["\']([^"\']+)', html)
    loaded += re.findall(r'<link[^>]*\shref=["\']([^"\']+)', html)
    for url in re.findall(r'(?:src|href)=["\']([^"\']+)["\']', html):
        if not url.startswith(("/", "#")) or url.startswith("//"):
            fail(f"{page} points at {url}, outside the site")
    for url in loaded:
        status, _ = shopper.get(url)
        if status != 200:
            fail(f"{page}: {url} answered {status}")
    outside = re.search(r"https?://[^\s\"'<]+", html)
    if outside:
        fail(f"{page} names an outside URL: {outside.group(0)}")
    return loaded


def main():
    blocks = doc_blocks()
    actions = [action for action, _, _ in blocks]
    for needed in ("torch", "package", "run", "write", "append", "train"):
        if needed not in actions:
            fail(f"docs/install.md has no fresh-install block for {needed!r}")
    work = Path(tempfile.mkdtemp(prefix="fresh-install-"))
    say(f"working in {work}")
    server = None
    try:
        dist, venv, store = work / "dist", work / "venv", work / "store"
        run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", dist, ROOT],
            cwd=work,
            env=os.environ,
        )
        run([sys.executable, "-m", "venv", venv], cwd=work, env=os.environ)
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("PYTHONPATH", "DJANGO_SETTINGS_MODULE", "VIRTUAL_ENV")
        }
        env.update(
            PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}",
            VIRTUAL_ENV=str(venv),
            RECOMMENDER_PSEUDONYM_KEY=secrets.token_urlsafe(40),
            CELERY_BROKER_URL="memory://",
            PIP_DISABLE_PIP_VERSION_CHECK="1",
        )
        store.mkdir()
        project_made = False
        for action, path, body in blocks:
            if action == "torch":
                if "download.pytorch.org/whl/cpu" not in body:
                    fail("the documented torch install is not PyTorch's CPU index")
                command = body if TORCH == "docs" else f"pip install {TORCH}"
                run(command, cwd=work, env=env, shell=True)
            elif action == "package":
                run(body, cwd=dist, env=env, shell=True)
            elif action == "train":
                continue
            else:
                if not project_made:
                    make_project(store, env)
                    project_made = True
                if action == "run":
                    run(body, cwd=store, env=env, shell=True)
                elif action in ("write", "append"):
                    target = store / path
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with target.open("a" if action == "append" else "w") as file:
                        file.write(("\n" if action == "append" else "") + body)
                    say(f"{action} {path} ({len(body)} characters from the docs)")
                else:
                    fail(f"unknown fresh-install action {action!r}")
        check_cpu_only(store, env)
        python = str(venv / "bin" / "python")
        run([python, "manage.py", "check"], cwd=store, env=env)
        run([python, "manage.py", "shell", "-c", SEED], cwd=store, env=env)
        run([python, "-c", CELERY_CHECK], cwd=store, env=env)

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [python, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
            cwd=store,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for(base, server)
        shoppers = record_events(base, store, env, python)
        for action, _, body in blocks:
            if action == "train":
                run(body, cwd=store, env=env, shell=True)
        shopper_sees_model(base, shoppers[0])
        api_documents_itself(base)
        say("OK: the docs' install worked on a new project")
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
        if os.environ.get("FRESH_INSTALL_KEEP"):
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def make_project(store, env):
    run(["django-admin", "startproject", "yourproject", "."], cwd=store, env=env)
    run(["python", "manage.py", "startapp", "shop"], cwd=store, env=env)
    (store / "shop" / "models.py").write_text(PRODUCT_MODEL)
    with (store / "yourproject" / "settings.py").open("a") as file:
        file.write(STORE_SETTINGS)
    with (store / "yourproject" / "urls.py").open("a") as file:
        file.write(STORE_URLS)


def check_cpu_only(store, env):
    packages = run(["pip", "list", "--format=freeze"], cwd=store, env=env).split()
    nvidia = [p for p in packages if p.lower().startswith("nvidia")]
    if nvidia:
        fail(f"CUDA packages installed: {nvidia}")
    version = run(
        ["python", "-c", "import torch; print(torch.__version__, torch.version.cuda)"],
        cwd=store,
        env=env,
    ).split()
    if version[1] != "None":
        fail(f"torch {version[0]} is a CUDA build")
    say(f"CPU-only: torch {version[0]}, {len(packages)} packages, no nvidia-*")


CELERY_CHECK = """
from yourproject import celery_app
schedule = celery_app.conf.beat_schedule
names = {entry["task"] for entry in schedule.values()}
wanted = {"recommender.train", "recommender.fail_stale_runs", "recommender.delete_old_recommendations"}
assert wanted <= names, names
assert all(e["options"]["queue"] == "recommender-training" for e in schedule.values()), schedule
assert celery_app.conf.beat_scheduler == "django_celery_beat.schedulers:DatabaseScheduler"
print("celery beat entries:", sorted(names))
"""


def wait_for(base, server):
    for _ in range(120):
        if server.poll() is not None:
            fail(f"runserver exited: {server.stderr.read()[-2000:]}")
        try:
            urllib.request.urlopen(base + "/api/recommender/popular/", timeout=5)
            return
        except OSError:
            time.sleep(0.5)
    fail("runserver did not answer in 60 s")


def record_events(base, store, env, python):
    ids = json.loads(
        run(
            [
                python,
                "manage.py",
                "shell",
                "-c",
                "import json; from shop.models import Product; "
                "print(json.dumps([str(p) for p in Product.objects.order_by('name')"
                ".values_list('pk', flat=True)]))",
            ],
            cwd=store,
            env=env,
        )
        .strip()
        .splitlines()[-1]
    )
    rng = random.Random(0)
    now_ms = int(time.time() * 1000)
    day = 86_400_000
    stored, shoppers = 0, []
    for s in range(N_SHOPPERS):
        shopper = Shopper(base)
        status, page = shopper.get("/")
        if status != 200:
            fail(f"home page answered {status}")
        if s == 0:
            status, _ = shopper.post_json(
                "/api/recommender/events/", {"kind": "view", "item": ids[0]}, csrf=False
            )
            if status != 403:
                fail(f"an event without the CSRF token answered {status}, not 403")
        start, end_day = rng.randrange(len(ids)), rng.uniform(0, 12)
        events = [
            {
                "kind": "purchase" if step % 5 == 4 else "view",
                "item": ids[(start + step) % len(ids)],
                "occurred_at": int(now_ms - (end_day + EVENTS_EACH - 1 - step) * day),
            }
            for step in range(EVENTS_EACH)
        ]
        status, answer = shopper.post_json("/api/recommender/events/", {"events": events})
        if status != 201:
            fail(f"recording events answered {status}: {answer}")
        stored += answer["stored"]
        shoppers.append(shopper)
    if stored != N_SHOPPERS * EVENTS_EACH:
        fail(f"{stored} events stored of {N_SHOPPERS * EVENTS_EACH}")
    say(f"{stored} events recorded over HTTP by {N_SHOPPERS} anonymous shoppers, with CSRF")
    return shoppers


def shopper_sees_model(base, shopper):
    """A shopper with history gets the trained model's list on the home page."""
    status, html = shopper.get("/")
    carousel = re.search(r'<section class="rec-carousel"[^>]*>', html)
    if status != 200 or carousel is None:
        fail("the home page renders no carousel")
    if 'data-rec-source="model"' not in carousel.group(0) or "data-rec-version" not in html:
        fail(f"the carousel is not the trained model's: {carousel.group(0)}")
    names = re.findall(r'class="rec-carousel__name">(Product \d+)<', html)
    if len(names) < 5:
        fail(f"the carousel holds {len(names)} products")
    local_assets(shopper, html, "the home page")
    say(f"carousel from the trained model: {', '.join(names[:5])}, ...")


def api_documents_itself(base):
    shopper = Shopper(base)
    status, schema = shopper.get("/api/recommender/schema/")
    if status != 200 or "/api/recommender/events/" not in schema or "openapi:" not in schema:
        fail(f"schema/ answered {status}")
    status, html = shopper.get("/api/recommender/docs/")
    if status != 200 or "swagger-ui" not in html:
        fail(f"docs/ answered {status}")
    loaded = local_assets(shopper, html, "docs/")
    say(f"schema/ and docs/ work; docs/ loads only the site's own files: {', '.join(loaded)}")


if __name__ == "__main__":
    main()
