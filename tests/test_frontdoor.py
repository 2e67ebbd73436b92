"""The front door's addressing and guards, with real deployments and replicas: two
users' deployments of one name are each reached only through their own
owner-qualified address (`/d/~OWNER/NAME/`), the bare name is refused while it is
ambiguous, anonymous callers cannot tell a private deployment from a missing one,
and a read-only token sends no unsafe method through it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Api, make_settings, open_api
from tests.factories import TASK_PYTHON, add_user, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

# A replica that says whose it is and echoes what it was sent, so a test sees where
# a request (and its body) went.
ECHO = """
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        size = int(self.headers.get("Content-Length") or 0)
        sent = self.rfile.read(size).decode()
        body = f"{os.environ['WHO']} {self.command} {self.path} {sent}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = answer

    def log_message(self, format, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""

ANONYMOUS = {"Authorization": ""}


@pytest.fixture
async def api(data_dir: Path, database_url: str | None) -> AsyncIterator[Api]:
    async for item in open_api(make_settings(data_dir, database_url, stop_grace_seconds=1.0)):
        yield item


@pytest.fixture
def echo(readable_dir: Path) -> Path:
    path = readable_dir / "echo.py"  # where the replica's account can read it
    path.write_text(ECHO)
    return path


def deployment(echo: Path, who: str, visibility: str, name: str = "web") -> dict[str, Any]:
    return {
        "type": "deployment",
        "spec": {
            "name": name,
            "command": f"{TASK_PYTHON} {echo}",
            "environment_variables": {"WHO": who},
            "routes": [{"container_port": 8000, "visibility": visibility}],
            "health_check": {"interval": 0.2, "timeout": 0.5, "failure_count": 2},
        },
    }


async def apply(api: Api, headers: httpx.Headers, recipe: dict[str, Any]) -> None:
    applied = await api.client.put("/api/recipes", json=recipe, headers=headers)
    assert applied.status_code == 201, applied.text


async def ready(api: Api, owner: str, name: str = "web") -> dict[str, Any]:
    """The deployment's view once one replica takes traffic."""

    async def check() -> dict[str, Any] | None:
        response = await api.client.get(f"/api/deployments/{name}?owner_name={owner}")
        view: dict[str, Any] = response.json()
        return view if any(r["ready"] for r in view["replicas"]) else None

    found: dict[str, Any] = await wait_for(check, timeout=60, what=f"{owner}'s {name}")
    return found


async def test_each_owner_reaches_only_her_own_deployment_of_a_shared_name(
    api: Api, echo: Path
) -> None:
    bob = await add_user(api.ctx, "bob")
    alice = await add_user(api.ctx, "alice")
    await apply(api, bob, deployment(echo, "bob", "public"))  # first, and public
    await apply(api, alice, deployment(echo, "alice", "owner"))
    bobs = await ready(api, "bob")
    alices = await ready(api, "alice")
    # Two deployments are named `web`: the bare name means neither, for anyone.
    for who, addresses in ((alice, ["/d/~alice/web/", "/d/~bob/web/"]), (bob, ["/d/~bob/web/"])):
        bare = await api.client.post("/d/web/", content=b"secret", headers=who)
        assert bare.status_code == 409, bare.text
        message = bare.json()["message"]
        assert all(address in message for address in addresses), message
        assert ("/d/~alice/web/" in message) == (who is alice), message  # hers stays private

    assert alices["endpoints"]["http"] == "http://flotilla/d/~alice/web/"
    assert bobs["endpoints"]["http"] == "http://flotilla/d/~bob/web/"

    mine = await api.client.post("/d/~alice/web/x?q=1", content=b"secret", headers=alice)
    assert (mine.status_code, mine.text) == (200, "alice POST /x?q=1 secret")
    assert (await api.client.get("/d/~alice/web", headers=alice)).text == "alice GET / "
    assert (await api.client.get("/d/~bob/web/", headers=alice)).text.startswith("bob ")
    assert (await api.client.get("/d/~bob/web/", headers=ANONYMOUS)).text.startswith("bob ")
    assert (await api.client.get("/d/~alice/web/", headers=bob)).status_code == 404

    deleted = await api.client.delete("/api/deployments/web?owner_name=bob", headers=bob)
    assert deleted.status_code == 204, deleted.text
    # Unique again: the bare name is hers.
    assert (await api.client.get("/d/web/", headers=alice)).text == "alice GET / "


async def test_anonymous_callers_cannot_tell_a_private_deployment_from_a_missing_one(
    api: Api, echo: Path
) -> None:
    alice = await add_user(api.ctx, "alice")
    stranger = await add_user(api.ctx, "sam")
    await apply(api, alice, deployment(echo, "alice", "owner"))
    await ready(api, "alice")
    assert (await api.client.get("/d/web/", headers=alice)).status_code == 200

    # Each private address beside a missing one; the answers name what was asked for.
    pairs = [
        ("/d/web/", "/d/nothing/"),
        ("/d/web", "/d/nothing"),
        ("/d/~alice/web/", "/d/~alice/nothing/"),
        ("/d/~alice/web/x", "/d/~nobody/web/x"),
    ]
    for who, status in ((ANONYMOUS, 401), (stranger, 404)):
        for private, missing in pairs:
            for method in ("GET", "POST"):
                there = await api.client.request(method, private, headers=who)
                gone = await api.client.request(method, missing, headers=who)
                assert there.status_code == gone.status_code == status, (there.text, gone.text)
                unnamed = gone.text.replace("nothing", "web").replace("nobody", "alice")
                assert there.text == unnamed


async def test_a_read_only_token_sends_no_unsafe_method_through_the_front_door(
    api: Api, echo: Path
) -> None:
    reader = await add_user(api.ctx, "alice", scopes=("read",))
    public = deployment(echo, "admin", "public", name="open")
    await apply(api, httpx.Headers(), deployment(echo, "admin", "org"))  # the admin's
    await apply(api, httpx.Headers(), public)
    await ready(api, "admin")
    await ready(api, "admin", "open")

    for path in ("/d/web/", "/d/~admin/web/", "/d/~admin/open/"):
        assert (await api.client.get(path, headers=reader)).status_code == 200
        assert (await api.client.head(path, headers=reader)).status_code == 200
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            refused = await api.client.request(method, path, content=b"x", headers=reader)
            assert refused.status_code == 403, refused.text
            assert "read-only" in refused.json()["message"]
    # The same read-only refusal for a deployment that is not there: nothing to learn.
    missing = await api.client.post("/d/nothing/", headers=reader)
    assert missing.status_code == 403, missing.text

    written = await api.client.post("/d/web/", content=b"x")  # the admin's full token
    assert (written.status_code, written.text) == (200, "admin POST / x")
