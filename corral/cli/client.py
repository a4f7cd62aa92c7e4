"""The CLI's way to the engine: a small synchronous REST client and the saved login.

The CLI talks only to the REST API. ``corral login`` stores the URL and token in the user's config
directory (``$XDG_CONFIG_HOME/corral/cli.json``, mode 0600).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx

from corral.cli.common import fail

TERMINAL = ("succeeded", "failed")


def config_path() -> Path:
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "corral" / "cli.json"


def save_login(url: str, token: str) -> Path:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"url": url.rstrip("/"), "token": token}, fh)
    return path


def load_login() -> tuple[str, str]:
    url, token = os.environ.get("CORRAL_URL"), os.environ.get("CORRAL_TOKEN")
    if url and token:
        return url.rstrip("/"), token
    try:
        data = json.loads(config_path().read_text())
        return str(data["url"]), str(data["token"])
    except (OSError, ValueError, KeyError):
        fail("not logged in: run 'corral login URL --token TOKEN' (or set CORRAL_URL and CORRAL_TOKEN)")


class ApiClient:
    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 60.0) -> None:
        if url is None or token is None:
            url, token = load_login()
        self.url = url
        self.http = httpx.Client(base_url=url + "/api/v1", headers={"Authorization": f"Bearer {token}"},
                                 timeout=timeout)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
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
