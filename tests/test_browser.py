"""The lab in a real browser: headless Chromium (Debian's) driven by Playwright, as a student uses it.

    python -m pytest tests/test_browser.py -s          # prints the folder with the screenshots

Against the compose lab (docker-compose.cpu.yml) wherever a Docker engine
answers, CI included: its image is $LAB_IMAGE, else classifier-lab:test-cpu,
built with tests/test_docker.py's very build arguments (conftest.py's
`lab_test_image`), so one of the two builds is only a tag from Docker's
cache. Without an engine (outside CI), or with `BROWSER_LAB=host`, against
JupyterLab and TensorBoard started from the test's own Python environment.
With `BROWSER_LAB=invoke`, against the lab a student starts, `invoke lab
--variant $BROWSER_LAB_VARIANT` (default gpu) from the image `invoke build`
made, as .github/workflows/gpu.yml runs it.
Either way: without the token JupyterLab refuses; with it, notebook 02 and
notebook 04 (on its own kernel, "Python (PyTorch)") are opened and run top to
bottom through JupyterLab's Run menu, on a few hundred images for one epoch
(NOTEBOOK_LIMIT and NOTEBOOK_EPOCHS, which compose passes on): no output cell
is an error or a stderr block, the plots rendered, the lecture's lines printed;
TensorBoard shows a run's scalars.
Playwright's own browser download cannot work offline, so Debian's
/usr/bin/chromium is used.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from conftest import (
    ROOT,
    container_user_ids,
    docker_engine_answers,
    run_invoke,
    train_fashion,
)

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(os.environ.get("BROWSER_SCREENSHOTS", ROOT / "test-output" / "browser"))
IN_CI = os.environ.get("CI") == "true"
NOTEBOOK = "notebooks/02_keras_classifier.ipynb"
TORCH_NOTEBOOK = "notebooks/04_pytorch_classifier.ipynb"
# The notebooks' size in the lab: a few hundred images, one epoch (each notebook's first cell reads them).
NOTEBOOK_SIZE = {"NOTEBOOK_LIMIT": "600", "NOTEBOOK_EPOCHS": "1"}
# The notebook in front (each notebook opens in a workspace of its own, so it is the only one; see _run_all).
PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"

pytestmark = pytest.mark.slow


def _unavailable(reason: str):
    if IN_CI:
        pytest.fail(f"CI must run the browser test, but {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def _wait_for(url: str, timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _status(url) == 200:
            return
        if log and "Running as root is not recommended" in log.read_text():
            break  # a server that refused to start
        time.sleep(1)
    if log:
        raise AssertionError(f"{url} did not answer 200; server log:\n{log.read_text()[-3000:]}")
    raise AssertionError(f"{url} did not answer 200 within {timeout:.0f} s")


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium from Debian, driven by Playwright."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -r requirements/lab.lock)")
    if not Path(CHROMIUM).exists():
        _unavailable(f"{CHROMIUM} is missing (apt-get install chromium)")
    with sync_playwright() as playwright:
        # No sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, fashion_source):
    """A copy of the repository with verified Fashion-MNIST in data/ and a finished run in runs/."""
    root = tmp_path_factory.mktemp("browser") / "lab"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, root / name)
    result = run_invoke("data", "--dataset", "fashion_mnist", "--from", str(fashion_source), "--data-dir", str(root / "data"))
    assert result.returncode == 0, result.stderr
    run, _ = train_fashion(root, "--limit", "600", "--epochs", "2")
    return root, run


def _host_lab(root: Path):
    """JupyterLab and TensorBoard from this Python environment, as `jupyter lab --no-browser` would start them."""
    try:
        import jupyterlab
        import tensorboard  # noqa: F401
    except ImportError:
        _unavailable("jupyterlab/tensorboard are not installed (pip install -r requirements/lab.lock)")
    token, lab_port, board_port = uuid.uuid4().hex, _free_port(), _free_port()
    environment = {
        **os.environ, **NOTEBOOK_SIZE, "MPLBACKEND": "Agg",
        "CLASSIFIER_DATA_DIR": str(root / "data"), "CLASSIFIER_RUNS_DIR": str(root / "runs"),
        "PYTHONPATH": str(root), "JUPYTER_CONFIG_DIR": str(root / ".jupyter-config"),
        # The lab image's classroom settings (no news question, no update check), as students see them.
        "JUPYTER_CONFIG_PATH": str(ROOT / "docker" / "jupyter"),
    }
    # JupyterLab's built assets live under the prefix it was installed into.
    assets = Path(jupyterlab.__file__).resolve().parents[4] / "share" / "jupyter" / "lab"
    if assets.is_dir():
        environment["JUPYTERLAB_DIR"] = str(assets)
    log = open(root / "servers.log", "w")
    servers = [
        subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
                          f"--ServerApp.port={lab_port}", f"--ServerApp.token={token}",
                          f"--ServerApp.root_dir={root}", "--ServerApp.open_browser=False",
                          # CI runs as root; the compose lab never does.
                          *(["--allow-root"] if os.getuid() == 0 else [])],
                         cwd=root, env=environment, stdout=log, stderr=subprocess.STDOUT),
        subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(root / "runs"),
                          "--host", "127.0.0.1", "--port", str(board_port)],
                         cwd=root, env=environment, stdout=log, stderr=subprocess.STDOUT),
    ]

    def stop():
        for server in servers:
            server.terminate()
        for server in servers:
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
        log.close()

    return f"http://127.0.0.1:{lab_port}", token, f"http://127.0.0.1:{board_port}", stop


def _compose_lab(root: Path, image: str):
    """The compose lab (docker-compose.cpu.yml) on the copy, with its own ports, token and project name."""
    from classifier.machinery import docker_engine

    uid, gid = container_user_ids()
    if os.getuid() == 0:
        for path in [root, *root.rglob("*")]:
            os.chown(path, uid, gid, follow_symlinks=False)
    token, lab_port, board_port = uuid.uuid4().hex, _free_port(), _free_port()
    (root / ".env").write_text(f"JUPYTER_TOKEN={token}\nLAB_IMAGE={image}\nLAB_UID={uid}\nLAB_GID={gid}\n"
                               f"LAB_PORT={lab_port}\nTENSORBOARD_PORT={board_port}\n")
    compose = [*docker_engine.compose_command(), "-f", "docker-compose.cpu.yml", "-p", f"classifier-browser-{token[:8]}"]
    # On vfs storage creating a container copies the whole image: more than docker-compose 1.x's 60 s read timeout.
    # The notebooks' size goes from this environment into the lab's (docker/compose.services.yml passes it on).
    environment = {**os.environ, **NOTEBOOK_SIZE, "COMPOSE_HTTP_TIMEOUT": "600", "DOCKER_CLIENT_TIMEOUT": "600"}

    def stop():
        subprocess.run([*compose, "down", "--timeout", "5"], cwd=root, env=environment, capture_output=True, timeout=300)

    up = subprocess.run([*compose, "up", "-d", "--no-build"], cwd=root, env=environment, capture_output=True,
                        text=True, timeout=900)
    if up.returncode != 0:
        stop()
    assert up.returncode == 0, up.stdout + up.stderr

    return f"http://127.0.0.1:{lab_port}", token, f"http://127.0.0.1:{board_port}", stop


def invoke_lab(root: Path, variant: str):
    """The lab as a student starts it: `invoke lab --variant VARIANT` in the copy (the image `invoke build` made),
    on ports of its own; the token is the one it wrote to the copy's .env. `invoke down` stops it."""
    from classifier.machinery import docker_engine

    if os.getuid() == 0:  # the lab runs as the host user's ids, 1000 for root (docker_engine.host_ids)
        uid, gid = docker_engine.host_ids()
        for path in [root, *root.rglob("*")]:
            os.chown(path, uid, gid, follow_symlinks=False)
    lab_port, board_port = _free_port(), _free_port()
    # The copy's tasks.py and package; the notebooks' size passes on to the lab (docker/compose.services.yml).
    environment = {**os.environ, **NOTEBOOK_SIZE, "PYTHONPATH": str(root)}
    invoke = [sys.executable, "-m", "invoke"]

    def stop():
        subprocess.run([*invoke, "down", "--variant", variant], cwd=root, env=environment, capture_output=True,
                       timeout=300)

    up = subprocess.run([*invoke, "lab", "--variant", variant, "--port", str(lab_port),
                         "--tensorboard-port", str(board_port)], cwd=root, env=environment, capture_output=True,
                        text=True, timeout=900)
    if up.returncode != 0:
        stop()
    assert up.returncode == 0, up.stdout + up.stderr
    token = docker_engine.read_env_file(root / ".env")["JUPYTER_TOKEN"]
    return f"http://127.0.0.1:{lab_port}", token, f"http://127.0.0.1:{board_port}", stop


def _lab_mode() -> str:
    """"compose" where a Docker engine answers (CI starts one), "host" without one or with BROWSER_LAB=host,
    "invoke" with BROWSER_LAB=invoke (`invoke lab --variant $BROWSER_LAB_VARIANT`, default gpu: the GPU workflow)."""
    wanted = os.environ.get("BROWSER_LAB", "")
    if wanted not in ("", "compose", "host", "invoke"):
        pytest.fail(f"BROWSER_LAB={wanted!r}: use compose, host or invoke", pytrace=False)
    if wanted in ("host", "invoke"):
        return wanted
    if docker_engine_answers():
        return "compose"
    if IN_CI or wanted == "compose":
        _unavailable("no Docker engine answers for the compose lab (bash docker/ci-setup.sh starts one)")
    print("\n[browser] no Docker engine: the host's JupyterLab and TensorBoard stand in for the compose lab")
    return "host"


@pytest.fixture(scope="module")
def lab(workspace, request):
    """(JupyterLab URL, token, TensorBoard URL, mode, run folder), servers stopped afterwards."""
    root, run = workspace
    mode = _lab_mode()
    image = request.getfixturevalue("lab_test_image") if mode == "compose" else None
    if mode == "invoke":
        lab_url, token, board_url, stop = invoke_lab(root, os.environ.get("BROWSER_LAB_VARIANT", "gpu"))
    else:
        lab_url, token, board_url, stop = _compose_lab(root, image) if mode == "compose" else _host_lab(root)
    try:
        log = root / "servers.log" if mode == "host" else None
        _wait_for(f"{lab_url}/api", timeout=300, log=log)
        _wait_for(board_url, timeout=300, log=log)
        print(f"\n[browser] lab: {mode}{' (' + image + ')' if image else ''}; screenshots: {SCREENSHOTS}")
        yield lab_url, token, board_url, mode, run
    finally:
        stop()


@pytest.fixture
def page(browser):
    """A fresh browser context per test: a login redirect left by one test cannot cut into the next one's page."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    yield page
    context.close()


def _shot(page, name: str) -> Path:
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def test_without_the_token_the_lab_refuses(lab, page):
    lab_url, token, _, _, _ = lab
    response = page.request.get(f"{lab_url}/api/contents")
    assert response.status == 403
    page.goto(f"{lab_url}/lab")
    assert "/login" in page.url
    page.wait_for_selector("input[type=password]")
    assert page.locator(".jp-NotebookPanel").count() == 0
    _shot(page, "01-no-token-login")
    page.fill("input[type=password]", "wrong-" + token)
    page.keyboard.press("Enter")
    page.wait_for_load_state()
    assert "/login" in page.url and page.locator(".jp-NotebookPanel").count() == 0


def _run_all(page, lab_url: str, token: str, notebook: str, prefix: str):
    """Open a notebook in JupyterLab and run it through the Run menu until every cell ran or one failed.

    Returns (code cells, error outputs, stderr outputs, rendered images) as locators.
    """
    # A workspace of its own, reset: JupyterLab keeps each workspace's tabs on the server, and in the
    # default one the notebook run before would reopen beside this one and might be the tab in front.
    page.goto(f"{lab_url}/lab/workspaces/{prefix}/tree/{notebook}?reset&token={token}")
    page.wait_for_selector(f"{PANEL} .jp-Cell", timeout=120_000)
    # The kernel is ready when the status bar says Idle.
    page.wait_for_function("document.body.innerText.includes('Idle')", timeout=120_000)
    # JupyterLab's first-start question about news would cover the output; answer it.
    answer = page.get_by_role("button", name="No", exact=True)
    if answer.count():
        answer.first.click()
    _shot(page, f"{prefix}-opened")
    page.get_by_role("menuitem", name="Run", exact=True).click()
    _shot(page, f"{prefix}-run-menu")
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    # Done when every code cell has an execution number, or a cell failed (Run All then stops),
    # and none is still running or queued ([*]).
    page.wait_for_function(
        """(selector) => {
            const panel = document.querySelector(selector);
            // textContent, not innerText: JupyterLab skips rendering cells out of view, and their innerText is empty.
            const prompts = [...panel.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(p => p.textContent.trim());
            const failed = panel.querySelector("[data-mime-type='application/vnd.jupyter.error']") !== null;
            return prompts.length > 0 && !prompts.some(p => p.includes('*'))
                && (failed || prompts.every(p => /^\\[\\d+\\]:$/.test(p)));
        }""",
        arg=PANEL,
        timeout=900_000,
        polling=2000,
    )
    page.wait_for_timeout(2000)
    outputs = f"{PANEL} [data-mime-type='application/vnd.jupyter"
    return (page.locator(f"{PANEL} .jp-CodeCell"), page.locator(f"{outputs}.error']"),
            page.locator(f"{outputs}.stderr']"), page.locator(f"{PANEL} .jp-RenderedImage img"))


def _shots_top_to_bottom(page, prefix: str, pages: int = 12) -> list[Path]:
    """Screenshots of the whole notebook, one viewport at a time from its first cell, for a person to read."""
    scroller = page.locator(f"{PANEL} .jp-WindowedPanel-outer").first
    shots = []
    for index in range(pages):
        scroller.evaluate(f"box => {{ box.scrollTop = {index} * box.clientHeight; }}")
        page.wait_for_timeout(500)
        shots.append(_shot(page, f"{prefix}-{index + 1:02d}"))
        # Asked after the cells drew: JupyterLab's height of cells not yet drawn is an estimate.
        if scroller.evaluate("""box => {
                const cells = box.querySelectorAll('.jp-Cell');
                return cells[cells.length - 1].getBoundingClientRect().bottom <= box.getBoundingClientRect().bottom;
            }"""):
            break
    return shots


def _assert_ran_clean(page, cells, errors, stderr, images, minimum_images: int) -> str:
    """Every cell ran, no error or stderr block, each plot decoded by the browser; returns the notebook's text."""
    assert errors.count() == 0, errors.first.inner_text()[-2000:]
    assert stderr.count() == 0, stderr.first.text_content()[-2000:]
    prompts = page.locator(f"{PANEL} .jp-CodeCell .jp-InputPrompt").all_text_contents()
    assert len(prompts) == cells.count() and all(prompt.strip()[1:-2].isdigit() for prompt in prompts), prompts
    assert images.count() >= minimum_images
    for index in range(images.count()):
        images.nth(index).scroll_into_view_if_needed()
        size = images.nth(index).evaluate("img => [img.complete, img.naturalWidth, img.naturalHeight]")
        assert size[0] and size[1] > 100 and size[2] > 100, size
    return page.locator(PANEL).text_content()


def test_notebook_02_runs_top_to_bottom_in_jupyterlab(lab, page):
    lab_url, token, _, _, _ = lab
    cells, errors, stderr, images = _run_all(page, lab_url, token, NOTEBOOK, "02-notebook")
    shot = _shot(page, "04-notebook-ran")
    print(f"\n[browser] notebook 02: {cells.count()} code cells ran, {errors.count()} error outputs, "
          f"{stderr.count()} stderr outputs, {images.count()} images; {shot}")
    # The sample grid, the learning curves and the confusion matrix.
    text = _assert_ran_clean(page, cells, errors, stderr, images, minimum_images=3)
    _shot(page, "04b-notebook-plots")
    _shots_top_to_bottom(page, "04c-notebook-02")
    assert "test accuracy" in text


def test_notebook_04_runs_on_the_pytorch_kernel_in_jupyterlab(lab, page):
    lab_url, token, _, _, _ = lab
    kernels = json.loads(page.request.get(f"{lab_url}/api/kernelspecs?token={token}").text())["kernelspecs"]
    if "pytorch" not in kernels:
        _unavailable(f"this JupyterLab has no pytorch kernel (it has {sorted(kernels)}; ./setup.sh installs it)")
    cells, errors, stderr, images = _run_all(page, lab_url, token, TORCH_NOTEBOOK, "06-notebook-04")
    sessions = json.loads(page.request.get(f"{lab_url}/api/sessions?token={token}").text())
    assert [s["kernel"]["name"] for s in sessions if s["path"].endswith(Path(TORCH_NOTEBOOK).name)] == ["pytorch"]
    shots = _shots_top_to_bottom(page, "07-notebook-04")
    print(f"\n[browser] notebook 04: {cells.count()} code cells ran, {errors.count()} error outputs, "
          f"{stderr.count()} stderr outputs, {images.count()} images; {shots[0].parent}/07-notebook-04-*.png")
    text = _assert_ran_clean(page, cells, errors, stderr, images, minimum_images=1)  # the sample grid
    assert "Python (PyTorch)" in page.locator("body").inner_text()  # the kernel's name, as the student sees it
    for line in ("d loss / d w at w=2: 30.0", "Load fashion_mnist dataset: (480, 1, 28, 28) (480,)",
                 "[Training] epoch=0, val_loss=", "test accuracy", "two evaluations of the same images agree: False"):
        assert line in text, line


def test_tensorboard_shows_the_runs_scalars(lab, page):
    _, _, board_url, _, run = lab
    page.goto(f"{board_url}/#timeseries")
    page.wait_for_selector("text=epoch_accuracy", timeout=120_000)
    page.wait_for_selector(f"text={run.name}", timeout=60_000)
    # At least one scalar card drew its line chart.
    page.wait_for_selector("tb-metrics-scalar-card, scalar-card", timeout=60_000)
    # For the screenshot: whole curves (TensorBoard's default scaling clips a short run's first
    # epoch as an outlier), the curves only (the tag filter), and the settings pane closed.
    outliers = page.get_by_role("checkbox", name=re.compile("Ignore outliers"))
    if outliers.count() and outliers.first.is_checked():
        outliers.first.click()
    close = page.get_by_label("Close side pane")
    if close.count():
        close.first.click()
    page.locator("input[placeholder='Filter tags (regex)']").first.fill("epoch_")
    page.keyboard.press("Escape")  # the filter's suggestions would cover the cards
    page.wait_for_timeout(3000)
    shot = _shot(page, "05-tensorboard-scalars")
    body = page.locator("body").inner_text()
    print(f"\n[browser] TensorBoard: {shot}")
    for tag in ("epoch_loss", "epoch_accuracy", "epoch_learning_rate"):
        assert tag in body, tag
    tags = json.loads(page.request.get(f"{board_url}/data/plugin/scalars/tags").text())
    assert {"epoch_loss", "epoch_accuracy"} <= set(tags[f"{run.name}/tensorboard/train"])
    assert {"epoch_loss", "epoch_accuracy"} <= set(tags[f"{run.name}/tensorboard/validation"])
