"""The Python client's batches when an owner dies: a cluster of its own, since a node is killed."""

from __future__ import annotations

import pytest

from cacheapi.client import CacheClient, Unavailable
from tests.cluster import Cluster
from tests.processes import Registry
from tests.test_client import batch_ops, keys_owned, served_since

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(tmp_path):
    cluster = Cluster(
        Registry(f"sqlite:///{tmp_path / 'r.sqlite3'}"),
        tmp_path,
        3,
        CACHE_FORWARD_TIMEOUT="1",
        CACHE_REPLICAS="1",  # pins primary-only placement; replication: test_replication.py
    )
    with cluster:
        yield cluster


def test_a_dead_owner_fails_only_its_keys(cluster):
    c = CacheClient([cluster.nodes[0].url], api_key=cluster.registry.api_key, timeout=3)
    try:
        ring = c.ring
        # n3 owns most of one batch (the client must send it elsewhere) and little of the other.
        most = keys_owned(ring, "most", {"n3": 40, "n1": 10, "n2": 10})
        few = keys_owned(ring, "few", {"n3": 5, "n1": 30, "n2": 20})
        assert c.set_many({k: k for k in most + few}) == len(most) + len(few)
        cluster.node("n3").kill()  # the registry still lists it up: no heartbeat runs here

        for batch in (most, few):
            on_n3 = [k for k in batch if ring.primary(k).name == "n3"]
            live = [k for k in batch if k not in on_n3]

            with pytest.raises(Unavailable) as info:
                c.get_many(batch)
            assert info.value.failed == on_n3

            with pytest.raises(Unavailable) as info:
                c.set_many({k: k.upper() for k in batch})
            assert info.value.failed == on_n3
            # The live owners' keys were stored, and a batch of only those is served whole:
            # on streams, one frame to each live owner, and no node calls another.
            before = batch_ops(cluster, ["n1", "n2"])
            assert c.get_many(live) == {k: k.upper() for k in live}
            served = served_since(cluster, before)
            assert served == {"n1": {"get_many": 1}, "n2": {"get_many": 1}}

            with pytest.raises(Unavailable) as info:
                c.delete_many(batch)
            assert info.value.failed == on_n3
            assert c.get_many(live) == {}
    finally:
        c.close()
