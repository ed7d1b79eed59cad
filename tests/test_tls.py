"""Two nodes serving HTTPS that forward to each other, verifying against a CA bundle."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import requests

from cacheapi.client import CacheClient, Unavailable
from nodes.ring import Ring
from tests.cluster import Cluster
from tests.processes import Registry, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is missing"),
]


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certs(out: Path) -> Path:
    """A throwaway CA and one certificate for 127.0.0.1 signed by it."""
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        cwd=out,
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "node.key",
        "-out",
        "node.csr",
        cwd=out,
    )
    (out / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "node.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "node.pem",
        cwd=out,
    )
    return out


def test_tls_nodes_forward_to_each_other_with_verification(tmp_path):
    certs = make_certs(tmp_path)
    registry = Registry(
        f"sqlite:///{tmp_path / 'r.sqlite3'}", CACHE_CA_BUNDLE=str(certs / "ca.pem")
    )
    cluster = Cluster(registry, tmp_path, 2)
    for n in cluster.nodes:
        n.url = n.url.replace("http://", "https://")
    cluster.session.verify = str(certs / "ca.pem")
    cluster.session.trust_env = False  # REQUESTS_CA_BUNDLE would override verify
    try:
        for n in cluster.nodes:
            n.start("--certfile", str(certs / "node.pem"), "--keyfile", str(certs / "node.key"))
        for n in cluster.nodes:
            wait_for(lambda n=n: cluster.session.get(f"{n.url}/health", timeout=2).ok, timeout=30)
        ring = Ring.from_dict(cluster.ring(cluster.nodes[0]))
        assert all(node.url.startswith("https://") for node in ring.nodes)
        key = next(f"t{i}" for i in range(100) if ring.primary(f"t{i}").name == "n2")
        # Written through n1, which must forward over verified TLS to n2.
        r = cluster.put(cluster.nodes[0], f"/api/v1/keys/{key}", {"value": "secret"})
        assert r.status_code == 200, r.text
        assert cluster.get(cluster.nodes[1], f"/api/v1/keys/{key}").json()["value"] == "secret"
        assert cluster.stats(cluster.nodes[0])["forwards"] == 1
        # Without the CA the certificate is refused: verification is on.
        plain = requests.Session()
        plain.trust_env = False
        with pytest.raises(requests.exceptions.SSLError):
            plain.get(f"{cluster.nodes[0].url}/health", timeout=5, verify=True)
        plain.close()

        # The client's streams ride the same verified TLS; without the CA nothing connects.
        client = CacheClient(
            [cluster.nodes[0].url], api_key=registry.api_key, ca_certs=str(certs / "ca.pem")
        )
        unverified = CacheClient([cluster.nodes[0].url], api_key=registry.api_key, timeout=3)
        try:
            before = sum(cluster.stats(n)["ops"].get("stream_set", 0) for n in cluster.nodes)
            client.set("over-tls", b"\x00raw")
            assert client.get("over-tls") == b"\x00raw"
            after = sum(cluster.stats(n)["ops"].get("stream_set", 0) for n in cluster.nodes)
            assert after == before + 1  # framed on a stream, not an HTTP request
            with pytest.raises(Unavailable):
                unverified.get("over-tls")
        finally:
            client.close()
            unverified.close()
    finally:
        cluster.stop()


def test_a_three_node_tls_cluster_from_gencerts_refuses_a_node_of_another_ca(tmp_path):
    """gencerts' CA: client, Django backend and node-to-node calls over verified TLS; a node
    whose certificate another CA signed is refused by its peers (its keys fail, not leak)."""
    from cacheapi.backends import ClusterCache
    from nodes.management.commands.gencerts import generate
    from tests.processes import NodeProcess

    certs, rogue = tmp_path / "certs", tmp_path / "rogue"
    generate(certs, ["n1", "n2", "n3"], [], days=1)
    generate(rogue, ["n4"], [], days=1)  # a CA of its own
    ca = str(certs / "ca.pem")
    registry = Registry(f"sqlite:///{tmp_path / 'r.sqlite3'}", CACHE_CA_BUNDLE=ca)
    cluster = Cluster(registry, tmp_path, 3)
    cluster.session.verify = ca
    cluster.session.trust_env = False
    intruder = NodeProcess(registry, "n4", tmp_path)
    try:
        for n in cluster.nodes:
            n.url = n.url.replace("http://", "https://")
            n.start(
                "--certfile",
                str(certs / f"{n.name}.pem"),
                "--keyfile",
                str(certs / f"{n.name}.key"),
            )
        for n in cluster.nodes:
            wait_for(lambda n=n: cluster.session.get(f"{n.url}/health", timeout=2).ok, timeout=30)
        client = CacheClient([cluster.nodes[0].url], api_key=registry.api_key, ca_certs=ca)
        backend = ClusterCache(
            [n.url for n in cluster.nodes],
            {"OPTIONS": {"API_KEY": registry.api_key, "CA_BUNDLE": ca}},
        )
        try:
            client.set_many({f"k{i}": i for i in range(30)})  # batches fan out node to node
            assert client.get_many([f"k{i}" for i in range(30)]) == {f"k{i}": i for i in range(30)}
            backend.set("django", {"over": "tls"})
            assert backend.get("django") == {"over": "tls"}
            assert sum(cluster.stats(n)["items"] for n in cluster.nodes) == 2 * 31

            # n4 serves a certificate from another CA: once it is in the ring, its peers
            # refuse its TLS, so calls to it fail (503 / failed keys) and nothing is sent to it.
            intruder.start("--certfile", str(rogue / "n4.pem"), "--keyfile", str(rogue / "n4.key"))
            intruder.url = intruder.url.replace("http://", "https://")

            def n4_up() -> bool:
                nodes = {n["name"]: n["status"] for n in cluster.ring(cluster.nodes[0])["nodes"]}
                return nodes.get("n4") == "up"  # serving (it pulled its keys over TLS)

            wait_for(n4_up, timeout=30)
            ring = Ring.from_dict(cluster.ring(cluster.nodes[0]))
            owned = next(f"x{i}" for i in range(500) if ring.primary(f"x{i}").name == "n4")
            r = cluster.put(
                cluster.nodes[0],
                f"/api/v1/keys/{owned}",
                {"value": "secret"},
                headers={"X-API-Key": registry.api_key},
            )
            assert r.status_code == 200, r.text
            assert r.json()["copies"] == 1  # the other owner took it; n4 did not get it
            log = cluster.nodes[0].log()
            assert "CERTIFICATE_VERIFY_FAILED" in log or "certificate verify failed" in log
        finally:
            client.close()
    finally:
        intruder.stop()
        cluster.stop()
