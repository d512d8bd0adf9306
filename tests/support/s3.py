"""A throwaway S3-compatible server for the tests: moto's standalone server, a process of
its own on 127.0.0.1 (real HTTP; nothing in the test process is patched).

It checks credentials (moto's IAM emulation): ``writer`` may do anything in S3,
``reader`` may only read and list, any other key is unknown. Each test makes a bucket of
its own (``new_bucket``) and hands the ``search`` processes ``env(...)``: the standard
AWS variables, as a user would set them for MinIO or any S3-compatible store.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from typing import Any

from tests.support.postgres import free_port

# The actions moto allows before it checks credentials: those that create the users below.
SETUP_ACTIONS = 6
POLICIES = {
    "writer": ["s3:*"],
    "reader": ["s3:GetObject", "s3:ListBucket", "s3:HeadBucket"],
}


class S3Server:
    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.keys: dict[str, tuple[str, str]] = {}

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, prefix: list[str] | None = None) -> None:
        """Start the server (``prefix``: a command to start it under, e.g. ``ip netns exec``)."""
        env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(SETUP_ACTIONS)}
        self.process = subprocess.Popen([*(prefix or []), sys.executable, "-m", "moto.server", "-H", self.host,
                                         "-p", str(self.port)], env=env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # a connection, not a request: requests count as setup actions
            if self.process.poll() is not None:
                raise RuntimeError("moto's server exited at start")
            try:
                socket.create_connection((self.host, self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        else:
            raise RuntimeError("moto's server did not listen in 30 s")
        if not self.keys:
            self._users()

    def _users(self) -> None:
        iam = self.client(None, service="iam")
        for user, actions in POLICIES.items():
            iam.create_user(UserName=user)
            key = iam.create_access_key(UserName=user)["AccessKey"]
            iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps(
                {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}))
            self.keys[user] = (key["AccessKeyId"], key["SecretAccessKey"])

    def client(self, user: str | None = "writer", service: str = "s3") -> Any:
        import boto3

        key, secret = self.keys.get(user, ("setup", "setup")) if user else ("setup", "setup")
        return boto3.client(service, endpoint_url=self.endpoint, aws_access_key_id=key, aws_secret_access_key=secret,
                            region_name="us-east-1")

    def env(self, user: str = "writer", endpoint: str | None = None) -> dict[str, str]:
        """What a user sets for an S3-compatible store: the endpoint and the credentials."""
        key, secret = self.keys.get(user, ("AKIANOSUCHUSER000000", "not-a-secret"))
        return {"AWS_ENDPOINT_URL": endpoint or self.endpoint, "AWS_ACCESS_KEY_ID": key,
                "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": "us-east-1"}

    def new_bucket(self) -> str:
        name = f"hpsearch-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def objects(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """Every object under ``prefix``: its key (less the prefix) and size."""
        found = {}
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            found.update({item["Key"][len(prefix):]: item["Size"] for item in page.get("Contents", [])})
        return found

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            self.process.wait(timeout=30)


def closed_port() -> int:
    """A port nothing listens on (an endpoint that refuses connections)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
