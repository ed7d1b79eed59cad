import json


def test_put_then_get_round_trips(api):
    r = api.put("/api/v1/keys/a", {"value": {"x": [1, 2]}, "ttl": 5}, content_type="application/json")
    assert r.status_code == 200
    r = api.get("/api/v1/keys/a")
    assert r.status_code == 200
    assert json.loads(r.content)["value"] == {"x": [1, 2]}
