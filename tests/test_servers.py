"""Smoke tests for the real-server fixtures (tests/support/servers.py)."""

from __future__ import annotations

import io
import uuid

import pytest
import redis
import urllib3
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.servers import RedisServer, S3Server

pytestmark = pytest.mark.integration


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def test_redis_restart_keeps_key(redis_server: RedisServer) -> None:
    key = _name("k")
    port, url = redis_server.port, redis_server.url
    redis.Redis.from_url(url).set(key, "v1")

    redis_server.restart()  # SIGTERM, then start on the same port/dir
    assert (redis_server.port, redis_server.url) == (port, url)
    c = redis.Redis.from_url(url)
    assert c.get(key) == b"v1"

    c.set(key, "v2")  # appendfsync always: survives even SIGKILL
    redis_server.kill()
    redis_server.start()
    assert redis.Redis.from_url(url).get(key) == b"v2"


def test_redis_password(tmp_path) -> None:
    with RedisServer(password="s3cret", base_dir=tmp_path / "r") as srv:
        assert srv.url == f"redis://:s3cret@127.0.0.1:{srv.port}/0"
        assert redis.Redis.from_url(srv.url).ping()
        # redis-py retries even AuthenticationError (~5 s) unless told not to
        no_retry = Retry(NoBackoff(), 0)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=srv.port, retry=no_retry).ping()


def test_s3_put_get_list(s3_server: S3Server) -> None:
    m = s3_server.client()
    bucket = _name("bkt")
    m.make_bucket(bucket)
    assert bucket in [b.name for b in m.list_buckets()]

    body = b"gan" * 10_000
    m.put_object(bucket, "a/b.bin", io.BytesIO(body), len(body))
    resp = m.get_object(bucket, "a/b.bin")
    try:
        assert resp.read() == body
    finally:
        resp.close()
        resp.release_conn()
    assert [o.object_name for o in m.list_objects(bucket, recursive=True)] == [
        "a/b.bin"
    ]


def test_s3_rejects_bad_credentials(s3_server: S3Server) -> None:
    import minio
    from minio.error import S3Error

    bad = minio.Minio(
        s3_server.endpoint, s3_server.access_key, "wrong-secret", secure=False
    )
    with pytest.raises(S3Error):
        bad.list_buckets()


def test_s3_restart_keeps_objects(s3_server: S3Server) -> None:
    bucket = _name("bkt")
    endpoint = s3_server.endpoint
    m = s3_server.client()
    m.make_bucket(bucket)
    m.put_object(bucket, "k", io.BytesIO(b"before"), 6)

    s3_server.stop()  # SIGKILL of the process group
    try:
        no_retry = urllib3.PoolManager(retries=False, timeout=2)
        with pytest.raises(urllib3.exceptions.HTTPError):
            s3_server.client(http_client=no_retry).list_buckets()
    finally:
        s3_server.start()
    assert s3_server.endpoint == endpoint
    m = s3_server.client()
    assert m.get_object(bucket, "k").read() == b"before"
    m.put_object(bucket, "k2", io.BytesIO(b"after"), 5)
    assert m.get_object(bucket, "k2").read() == b"after"
