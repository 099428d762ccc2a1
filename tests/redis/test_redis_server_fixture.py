"""The fixture itself: a real server that answers and is gone afterwards."""
import redis

from pwredis import redis_server  # noqa: F401 (fixture)


def test_fixture_starts_a_real_server_and_restarts_it(redis_server):
    r = redis.Redis.from_url(redis_server.url)
    try:
        assert r.ping()
        info = r.info("server")
        assert info["tcp_port"] == redis_server.port
        assert r.config_get("appendonly")["appendonly"] == "no"
        r.set("k", "v")
        redis_server.restart()
        assert r.get("k") is None  # no persistence by default
    finally:
        r.close()
        r.connection_pool.disconnect()
