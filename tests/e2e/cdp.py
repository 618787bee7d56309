"""Headless Chromium driven over the DevTools protocol (a websocket, with the
aiohttp we already have): enough of a phone to open a page, look at it,
tap on it and take a screenshot. No WebDriver, no new dependency; the
browser is Debian's `chromium` package."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

BROWSER_NAMES = ("chromium", "chromium-browser")
PACKAGES = "chromium"
# An iPhone-sized viewport (CSS pixels) and a phone's user agent.
PHONE_WIDTH, PHONE_HEIGHT, PHONE_SCALE = 390, 844, 3
PHONE_UA = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1"
)
START_TIMEOUT_S = 30.0
STEP_TIMEOUT_S = 30.0


def find_browser() -> str | None:
    for name in BROWSER_NAMES:
        path = shutil.which(name)
        if path is not None:
            return path
    return None


class Page:
    """One tab, attached with a flat session on the browser's websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, session_id: str | None) -> None:
        self._ws = ws
        self._session_id = session_id
        self._ids = itertools.count(1)
        self._answers: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def attach(self, session_id: str) -> None:
        self._session_id = session_id

    async def read_forever(self) -> None:
        async for frame in self._ws:
            if frame.type != aiohttp.WSMsgType.TEXT:
                continue
            message = json.loads(frame.data)
            future = self._answers.pop(message.get("id", -1), None)
            if future is not None:
                if "error" in message:
                    future.set_exception(RuntimeError(str(message["error"])))
                else:
                    future.set_result(message.get("result", {}))
            elif "method" in message:
                self._events.put_nowait(message)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        request_id = next(self._ids)
        request: dict[str, Any] = {"id": request_id, "method": method, "params": params}
        if self._session_id is not None:
            request["sessionId"] = self._session_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._answers[request_id] = future
        await self._ws.send_str(json.dumps(request))
        return await asyncio.wait_for(future, STEP_TIMEOUT_S)

    async def event(self, method: str) -> dict[str, Any]:
        async with asyncio.timeout(STEP_TIMEOUT_S):
            while True:
                message = await self._events.get()
                if message["method"] == method:
                    return message

    async def open(self, url: str) -> None:
        self._drain()
        await self.send("Page.navigate", url=url)
        await self.event("Page.loadEventFired")

    async def text(self, expression: str) -> Any:
        answer = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return answer["result"].get("value")

    async def tap(self, selector: str) -> None:
        """A finger on the element's middle, as a touch screen sends it;
        returns once the page it leads to has loaded."""
        box = await self.text(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
            ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        x, y = box
        self._drain()
        point = [{"x": x, "y": y}]
        await self.send("Input.dispatchTouchEvent", type="touchStart", touchPoints=point)
        await self.send("Input.dispatchTouchEvent", type="touchEnd", touchPoints=[])
        await self.event("Page.loadEventFired")

    async def screenshot(self, path: Path) -> None:
        answer = await self.send("Page.captureScreenshot", format="png")
        await asyncio.to_thread(path.write_bytes, base64.b64decode(answer["data"]))

    def _drain(self) -> None:
        while not self._events.empty():
            self._events.get_nowait()


@asynccontextmanager
async def phone(browser: str) -> AsyncIterator[Page]:
    """A headless Chromium with one phone-sized tab."""
    with tempfile.TemporaryDirectory(prefix="carrierd-chromium-") as profile:
        process = await asyncio.create_subprocess_exec(
            *[
                browser,
                "--headless=new",
                "--no-sandbox",  # root in a container has no user namespaces
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # A group of its own: its renderer and helper processes outlive
            # the browser for a moment, writing into the profile, which is
            # removed only once they are all gone.
            start_new_session=True,
        )
        try:
            active = Path(profile) / "DevToolsActivePort"
            async with asyncio.timeout(START_TIMEOUT_S):
                while not active.exists() or len(active.read_text().splitlines()) < 2:
                    if process.returncode is not None:
                        raise RuntimeError(f"{browser} exited with {process.returncode}")
                    await asyncio.sleep(0.05)
            port, path = active.read_text().splitlines()[:2]
            async with (
                aiohttp.ClientSession() as session,
                session.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=0) as ws,
            ):
                tab = Page(ws, None)
                reader = asyncio.ensure_future(tab.read_forever())
                try:
                    target = await tab.send("Target.createTarget", url="about:blank")
                    attached = await tab.send(
                        "Target.attachToTarget", targetId=target["targetId"], flatten=True
                    )
                    # From here on every command goes to the tab.
                    tab.attach(attached["sessionId"])
                    await tab.send("Page.enable")
                    await tab.send(
                        "Emulation.setDeviceMetricsOverride",
                        width=PHONE_WIDTH,
                        height=PHONE_HEIGHT,
                        deviceScaleFactor=PHONE_SCALE,
                        mobile=True,
                    )
                    await tab.send("Emulation.setTouchEmulationEnabled", enabled=True)
                    await tab.send("Emulation.setUserAgentOverride", userAgent=PHONE_UA)
                    yield tab
                finally:
                    reader.cancel()
        finally:
            await _end_group(process)


async def _end_group(process: asyncio.subprocess.Process) -> None:
    """The browser and every process it started, ended and gone."""
    for sig, grace_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        deadline = asyncio.get_running_loop().time() + grace_s
        while asyncio.get_running_loop().time() < deadline:
            if process.returncode is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(process.wait(), 0.05)
                continue
            try:
                os.killpg(process.pid, 0)  # anyone left in the group?
            except ProcessLookupError:
                return
            await asyncio.sleep(0.05)
