"""`slurm-vm vnc` and `slurm-vm vnc --web` against the tiny guest through real Slurm: a VNC client library
(vncdotool) and headless Chromium (Selenium, /usr/bin/chromium) on the login side; one VM for the file."""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import pytest

from tests.e2e.test_vm_jobs import start_tiny

pytestmark = [pytest.mark.cluster, pytest.mark.guest]
PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vnc_probe.py")
NAME = "victor"
SHIFTED = dict(zip('~!@#$%^&*()_+{}|:"<>?', "`1234567890-=[]\\;',./"))


@pytest.fixture(scope="module")
def vm(vm_cluster):
    vc = vm_cluster
    job, node = start_tiny(vc, NAME)
    vc.wait_serial(node, job, "SLURM-VM-TEST screen-shell tty1", timeout=120)
    yield vc, job, node
    vc.cluster.client(["scancel", str(job)])


class VncCommand:
    """`slurm-vm vnc ...` running as a user, in its own process group (Ctrl-C is a SIGINT to the group)."""

    def __init__(self, vc, *args: str, user: str = "svmtest"):
        self.proc = subprocess.Popen(vc.slurm_vm_argv("vnc", *args, user=user), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.lines: list[str] = []
        self.pending = ""

    def read_until(self, pattern: str, timeout: float = 90) -> re.Match:
        """The first match of `pattern` in a line of the command's stdout (read unbuffered: select then os.read)."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while True:
            for line in self.lines:
                if (match := re.search(pattern, line)):
                    return match
            if time.monotonic() > deadline or not select.select([fd], [], [], 1.0)[0]:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    break
                continue
            data = os.read(fd, 65536)
            if not data:
                break
            self.pending += data.decode(errors="replace")
            *done, self.pending = self.pending.split("\n")
            self.lines += done
        self.__exit__()
        raise AssertionError(f"{pattern!r} not printed; stdout {self.lines + [self.pending]}; "
                             f"stderr {self.proc.stderr.read()}")

    def __enter__(self) -> "VncCommand":
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:         # a failed test: end the session anyway
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)

    def interrupt(self, timeout: float = 60) -> tuple[int, str]:
        os.killpg(self.proc.pid, signal.SIGINT)
        return self.finish(timeout)

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        _, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, err


def probe(server: str, password: str, png: str, text: str = "", user: str = "root") -> subprocess.CompletedProcess:
    argv = [sys.executable, PROBE, server, password, png, *([text] if text else [])]
    if user != "root":
        argv = ["runuser", "-u", user, "--", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def not_blank(png: str) -> bool:
    from PIL import Image
    with Image.open(png) as image:
        return any(high > 0 for _, high in image.convert("RGB").getextrema())


def relays(job: int) -> list[str]:
    """Processes of the job's VNC relays, on the login side (srun) and on the node (slurm-vm vnc-relay)."""
    out = subprocess.run(["pgrep", "-a", "-f", f"vnc-relay {job}"], capture_output=True, text=True).stdout
    return out.splitlines()


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_until(check, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.5)
    return check()


def test_vnc_viewer_needs_the_session_password_and_the_users_own_uid(vm):
    vc, job, node = vm
    tmp = tempfile.mkdtemp(prefix="vnc-test-")
    os.chmod(tmp, 0o777)
    with VncCommand(vc, NAME) as session:
        port = int(session.read_until(r"is on 127\.0\.0\.1:(\d+) until").group(1))
        password = session.read_until(r"VNC password for this session only: (\S+)").group(1)
        server = f"127.0.0.1::{port}"

        shot = os.path.join(tmp, "viewer.png")
        good = probe(server, password, shot, text="echo VNC-KEYS-$((6*7)) > /dev/ttyS0")
        assert good.returncode == 0, good.stdout + good.stderr
        assert not_blank(shot)
        print(f"VNC screen captured: {shot}")
        vc.wait_serial(node, job, "VNC-KEYS-42", timeout=60)

        nopass = probe(server, "-", os.path.join(tmp, "nopass.png"))
        assert nopass.returncode == 1 and "wants a password" in nopass.stdout, nopass.stdout + nopass.stderr
        wrong = probe(server, "wrong123", os.path.join(tmp, "wrong.png"))
        assert wrong.returncode == 1 and "authentication failed" in wrong.stdout, wrong.stdout + wrong.stderr
        other = probe(server, password, os.path.join(tmp, "other.png"), user="svmother")
        assert other.returncode == 1 and "closed the connection" in other.stdout, other.stdout + other.stderr

        others = vc.slurm_vm("vnc", str(job), user="svmother")
        assert others.returncode == 4 and others.stderr.count("\n") == 1 and "not your VM" in others.stderr
        second = vc.slurm_vm("vnc", NAME, timeout=90)
        assert second.returncode == 11 and "in use by another" in second.stderr, second.stderr
        assert second.stderr.strip().count("\n") == 0, second.stderr

        code, err = session.interrupt()
    assert code == 0 and "its password no longer works" in err, err
    assert not listening(port)
    assert wait_until(lambda: relays(job) == []), relays(job)
    # the node's VNC server no longer takes the session's password
    direct = os.path.join(vc.node_state(node), "jobs", str(job), "vnc.sock")
    after = probe(direct, password, os.path.join(tmp, "after.png"))
    assert after.returncode == 1 and "authentication failed" in after.stdout, after.stdout + after.stderr


def chromium(user_data: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={user_data}", "--window-size=1280,900"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def type_into(driver, text: str) -> None:
    """Keys as a person types them: Shift held for shifted characters (chromedriver alone sends '$' as '4')."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    chain = ActionChains(driver)
    for char in text:
        if char in SHIFTED:
            chain.key_down(Keys.SHIFT).send_keys(SHIFTED[char]).key_up(Keys.SHIFT)
        else:
            chain.send_keys(char)
    chain.send_keys(Keys.ENTER).perform()


def http_status(url: str, user: str = "root") -> int:
    if user != "root":
        code = ("import sys, urllib.request, urllib.error\n"
                "try: print(urllib.request.urlopen(sys.argv[1], timeout=20).status)\n"
                "except urllib.error.HTTPError as e: print(e.code)\n")
        out = subprocess.run(["runuser", "-u", user, "--", sys.executable, "-c", code, url], capture_output=True,
                             text=True, timeout=60)
        return int(out.stdout.strip() or 0)
    try:
        return urllib.request.urlopen(url, timeout=20).status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_vnc_web_in_headless_chromium(vm):
    if not (os.path.exists("/usr/bin/chromium") and os.path.exists("/usr/bin/chromedriver")):
        pytest.skip("chromium and chromium-driver are not installed (scripts/install-deps)")
    from selenium.webdriver.common.action_chains import ActionChains
    vc, job, node = vm
    tmp = tempfile.mkdtemp(prefix="vnc-web-test-")
    with VncCommand(vc, "--web", str(job)) as session:
        url = session.read_until(r"(http://127\.0\.0\.1:\d+/\S+)").group(1)
        base, token = re.match(r"(http://127\.0\.0\.1:\d+)/([^/]+)/", url).groups()
        port = int(base.rsplit(":", 1)[1])
        session.read_until(r"ssh -N -L")

        assert http_status(f"{base}/{token}/vnc.html") == 200
        assert http_status(f"{base}/vnc.html") == 403
        assert http_status(f"{base}/{token[:-1]}x/vnc.html") == 403
        assert http_status(f"{base}/{token}/vnc.html", user="svmother") == 403

        driver = chromium(os.path.join(tmp, "profile"))
        try:
            driver.get(url)
            canvas = wait_connected(driver, tmp)
            ActionChains(driver).click(canvas).perform()
            time.sleep(1)
            type_into(driver, "echo VNC-WEB-$((7*6))0 > /dev/ttyS0")
            vc.wait_serial(node, job, "VNC-WEB-420", timeout=60)
            time.sleep(2)
            shot = os.path.join(tmp, "novnc.png")
            driver.save_screenshot(shot)
            print(f"browser screenshot: {shot}")
        finally:
            driver.quit()
        code, err = session.interrupt()
    assert code == 0, err
    assert not listening(port)
    assert wait_until(lambda: relays(job) == []), relays(job)


def wait_connected(driver, tmp: str):
    """noVNC's canvas, once noVNC says it is connected."""
    from selenium.webdriver.common.by import By
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        canvases = driver.find_elements(By.CSS_SELECTOR, "#noVNC_container canvas")
        connected = driver.execute_script("return document.documentElement.classList.contains('noVNC_connected')")
        if canvases and connected and canvases[0].size["width"] > 0:
            return canvases[0]
        time.sleep(0.5)
    driver.save_screenshot(os.path.join(tmp, "failed.png"))
    raise AssertionError(f"noVNC did not connect; screenshot {tmp}/failed.png")


def test_vnc_session_ends_with_the_vm_and_leaves_nothing(vm):
    vc, job, node = vm
    with VncCommand(vc, NAME) as session:
        port = int(session.read_until(r"is on 127\.0\.0\.1:(\d+) until").group(1))
        assert vc.slurm_vm("stop", NAME).returncode == 0
        code, err = session.finish(timeout=120)
    assert code == 10 and "ended: the session is over" in err, err
    assert not listening(port)
    assert vc.wait_gone_or_ended(job) == "COMPLETED"
    assert wait_until(lambda: relays(job) == []), relays(job)
    vc.wait_no_leaks(job)
