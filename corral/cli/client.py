"""The CLI's way to the engine: a small synchronous REST client and the saved login.

The CLI talks only to the REST API. ``corral login`` stores the URL, the token and how the engine's certificate
is trusted (a CA, or a pinned certificate: corral.cli.trust) in the user's config directory
(``$XDG_CONFIG_HOME/corral/cli.json``, mode 0600). ``CORRAL_URL`` and ``CORRAL_TOKEN`` (with ``CORRAL_CA``, a
CA file) stand in for it; the saved trust still applies when ``CORRAL_URL`` is the saved URL.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx

from corral.cli.common import fail
from corral.cli.trust import Trust, is_verify_error, refusal

TERMINAL = ("succeeded", "failed")


def config_path() -> Path:
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "corral" / "cli.json"


def save_login(url: str, token: str, trust: Trust | None = None) -> Path:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
    with os.fdopen(fd, "w") as fh:
        json.dump({"url": url.rstrip("/"), "token": token, **(trust or Trust()).config()}, fh)
    return path


def saved_login() -> dict[str, Any] | None:
    try:
        data = json.loads(config_path().read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def saved_trust(url: str) -> Trust | None:
    """The trust saved with the login to ``url`` (None: no login to that URL)."""
    data = saved_login()
    if data is None or str(data.get("url", "")).rstrip("/") != url.rstrip("/"):
        return None
    try:
        return Trust.from_config(data)
    except ValueError as exc:
        fail(f"{config_path()}: {exc}; run 'corral login' again")


def _env_ca() -> Trust | None:
    path = os.environ.get("CORRAL_CA")
    if not path:
        return None
    try:
        return Trust(ca_pem=Path(path).read_text())
    except OSError as exc:
        fail(f"CORRAL_CA {path}: {exc.strerror}")


def load_login() -> tuple[str, str, Trust]:
    url, token = os.environ.get("CORRAL_URL"), os.environ.get("CORRAL_TOKEN")
    if url and token:
        return url.rstrip("/"), token, _env_ca() or saved_trust(url) or Trust()
    data = saved_login()
    if data is None or "url" not in data or "token" not in data:
        fail("not logged in: run 'corral login URL --token TOKEN' (or set CORRAL_URL and CORRAL_TOKEN)")
    return str(data["url"]), str(data["token"]), saved_trust(str(data["url"])) or Trust()


class ApiClient:
    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 60.0,
                 trust: Trust | None = None) -> None:
        if url is None or token is None:
            url, token, trust = load_login()
        self.url = url
        self.trust = trust or Trust()
        # what any other connection to the engine (a console's WebSocket) must verify with
        self.ssl_context = self.trust.context()
        self.http = httpx.Client(base_url=url + "/api/v1", headers={"Authorization": f"Bearer {token}"},
                                 timeout=timeout, verify=self.ssl_context, follow_redirects=False)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            if is_verify_error(exc):
                fail(refusal(self.url, self.trust, exc), code=1)
            fail(f"cannot reach the engine at {self.url}: {exc}", code=1)
        if resp.status_code >= 400:
            try:
                body = resp.json()
                where = f" [{body['field']}]" if body.get("field") else ""
                message = f"{body.get('code', resp.status_code)}{where}: {body.get('message', resp.text)}"
                for key in ("rejections", "reasons"):
                    if body.get(key):
                        message += "\n" + json.dumps(body[key], indent=2)
            except (ValueError, AttributeError):
                message = f"HTTP {resp.status_code}: {resp.text[:300]}"
            fail(message, code=2 if resp.status_code in (400, 404, 409, 422) else 1)
        if resp.status_code == 204 or not resp.content:
            return None
        return resp.json()

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def resolve(self, kind: str, ref: str) -> dict[str, Any]:
        """A host, VM or cluster by id or by name."""
        items = self.get(f"/{kind}", name=ref, limit=2).get("items", [])
        exact = [i for i in items if i.get("name") == ref]
        if len(exact) == 1:
            return dict(exact[0])
        if len(exact) > 1:
            fail(f"more than one {kind[:-1]} is named {ref!r}; use its id")
        resp = self.http.get(f"/{kind}/{ref}")
        if resp.status_code == 200:
            return dict(resp.json())
        fail(f"no {kind[:-1]} named or with id {ref!r}")

    def wait_task(self, task: dict[str, Any], on_progress: Any = None, timeout: float = 600.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last = None
        while task.get("state") not in TERMINAL:
            if time.monotonic() > deadline:
                fail(f"task {task['id']} still {task.get('state')} after {timeout:g} s", code=1)
            time.sleep(0.2)
            task = self.get(f"/tasks/{task['id']}")
            if on_progress and task.get("message") and task.get("message") != last:
                last = task["message"]
                on_progress(last)
        return task
