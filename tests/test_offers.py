"""Offers and prices from the simulated cloud's catalog, through the API and the
`flo` CLI; fleets through the CLI against a real server."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import Api
from tests.factories import ADMIN_TOKEN, ServerProcess, wait_sync

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fleet-h100-elastic.yaml"


async def test_offers_carry_catalog_prices_and_free_capacity(api: Api) -> None:
    response = await api.client.get("/api/offers", params={"gpu": "H100:8", "region": "us-east1"})
    assert response.status_code == 200, response.text
    (offer,) = response.json()["offers"]
    assert offer == {
        "provider": "sim",
        "instance_type": "h100-80gb-sxm-ib.8x",
        "gpu_type": "H100",
        "gpus": 8,
        "region": "us-east1",
        "on_demand_per_hour": 31.2,  # $3.90 per GPU-hour
        "spot_per_hour": 12.8,  # $1.60
        "available": 32,
        "price_published": True,
    }
    h100s = (await api.client.get("/api/offers", params={"gpu": "h100"})).json()["offers"]
    assert {o["gpus"] for o in h100s} == {1, 8} and len({o["region"] for o in h100s}) == 5
    spot = (await api.client.get("/api/offers", params={"gpu": "H200", "spot": True})).json()
    assert spot["offers"] == []  # H200 has no spot price
    b200 = (await api.client.get("/api/offers", params={"gpu": "B200:8"})).json()["offers"]
    assert b200 and not any(o["price_published"] for o in b200)  # simulated, and says so
    bad = await api.client.get("/api/offers", params={"gpu": "H100:x"})
    assert bad.status_code == 422 and "H100:x" in bad.json()["message"]


@pytest.fixture
def server(data_dir: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(
        data_dir, FLOTILLA_LOCAL_NODE="0", FLOTILLA_SIM_PROVISIONING_DELAY="0.2"
    ).start()
    yield process
    process.stop()


def flo(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOTILLA_", "SATURN_"))}
    env.update({"FLOTILLA_URL": server.url, "FLOTILLA_TOKEN": ADMIN_TOKEN})
    return subprocess.run(["flo", *args], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_flo_offer_and_fleets(server: ServerProcess, tmp_path: Path) -> None:
    listed = flo(server, "offer", "--gpu", "H100:8", "--region", "us-east1", "--json")
    assert listed.returncode == 0, listed.stderr
    (offer,) = json.loads(listed.stdout)
    assert (offer["on_demand_per_hour"], offer["spot_per_hour"]) == (31.2, 12.8)

    table = flo(server, "offer", "--gpu", "H100:8", "--spot")
    assert table.returncode == 0, table.stderr
    lines = [line for line in table.stdout.splitlines() if "h100-80gb-sxm-ib.8x" in line]
    assert len(lines) == 5  # one per region
    assert all("8x H100" in line and "31.20" in line and "12.80" in line for line in lines)
    assert "simulated price" not in table.stdout  # H100 prices are published ones

    bad = flo(server, "offer", "--gpu", "H100:x")
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "error:" in bad.stderr

    applied = flo(server, "apply", str(EXAMPLE))
    assert applied.returncode == 0 and "applied fleet h100-elastic" in applied.stdout
    (fleet,) = json.loads(flo(server, "fleets", "--json").stdout)
    assert (fleet["name"], fleet["desired"], fleet["size"]) == ("h100-elastic", 0, 0)
    assert "h100-elastic" in flo(server, "fleets").stdout

    fixed = tmp_path / "fixed.yaml"
    spec = yaml.safe_load(EXAMPLE.read_text())
    spec["spec"].update(name="two", nodes=2)
    fixed.write_text(yaml.safe_dump(spec))
    assert flo(server, "apply", str(fixed)).returncode == 0

    def two_ready() -> bool:
        view = json.loads(flo(server, "fleet", "describe", "two", "--json").stdout)
        return bool(view["nodes_by_state"] == {"ready": 2})

    wait_sync(two_ready, 30, what="fleet two ready")
    described = flo(server, "fleet", "describe", "two")
    assert "fleet two: ready" in described.stdout and "62.40" in described.stdout

    too_big = tmp_path / "big.yaml"
    spec["spec"].update(name="big", nodes=40, placement="cluster")
    too_big.write_text(yaml.safe_dump(spec))
    failed = flo(server, "apply", str(too_big))
    assert failed.returncode == 1
    assert "no InfiniBand partition in us-east1 has 320 free" in failed.stderr

    assert flo(server, "fleet", "delete", "two", "--yes").returncode == 0
    assert [f["name"] for f in json.loads(flo(server, "fleets", "--json").stdout)] == [
        "h100-elastic"
    ]
