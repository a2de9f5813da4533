"""A local S3 endpoint for the remote tests: moto's threaded server on 127.0.0.1, port 0.

Started once per session, reset before each test (every bucket and object gone); the
tests reach it only through ``storage_options`` naming its address: no other address.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("moto", reason="the remote tests need moto[server] (dev extras)")
pytest.importorskip("s3fs", reason="the remote tests need s3fs (dev extras)")

import boto3
import requests
from moto.server import ThreadedMotoServer

KEY, SECRET = "testing-key", "testing-secret"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """storage_options for a fresh server with one bucket, ``bucket``."""
    for variable in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(variable, raising=False)
    requests.post(f"{s3_endpoint}/moto-api/reset", timeout=10).raise_for_status()
    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    )
    client.create_bucket(Bucket="bucket")
    return {
        "key": KEY,
        "secret": SECRET,
        "endpoint_url": s3_endpoint,
        "client_kwargs": {"region_name": "us-east-1"},
        "skip_instance_cache": True,
        "use_listings_cache": False,
    }


@pytest.fixture
def authenticating(s3: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The server checking signatures: options with a real IAM key allowed to use S3."""
    endpoint = s3["endpoint_url"]
    requests.post(f"{endpoint}/moto-api/reset-auth", data=b"3", timeout=10).raise_for_status()
    try:
        iam = boto3.client(
            "iam",
            endpoint_url=endpoint,
            aws_access_key_id="x",
            aws_secret_access_key="x",
            region_name="us-east-1",
        )
        iam.create_user(UserName="trainer")
        policy = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}'
        iam.put_user_policy(UserName="trainer", PolicyName="s3", PolicyDocument=policy)
        key = iam.create_access_key(UserName="trainer")["AccessKey"]
        yield {**s3, "key": key["AccessKeyId"], "secret": key["SecretAccessKey"]}
    finally:
        requests.post(f"{endpoint}/moto-api/reset-auth", data=b"inf", timeout=10)


@pytest.fixture
def fetched(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every ranged GET any S3 file system makes from now on, in order.

    s3fs's sync ``cat_file`` wraps the coroutine ``_cat_file`` looked up when a file
    system is made, so patching the class counts the reads of every one made after this.
    """
    from s3fs import S3FileSystem

    sizes: list[int] = []
    real = S3FileSystem._cat_file

    async def counting(
        self: Any, path: str, version_id: Any = None, start: Any = None, end: Any = None
    ) -> bytes:
        data: bytes = await real(self, path, version_id=version_id, start=start, end=end)
        sizes.append(len(data))
        return data

    monkeypatch.setattr(S3FileSystem, "_cat_file", counting)
    return sizes
