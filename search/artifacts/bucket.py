"""An artifact store in an S3 bucket (AWS S3, or any S3-compatible service: MinIO, Ceph,
R2, GCS's S3 interface): every host reaches it, so workers share nothing but it and the
database. ``--artifacts s3://BUCKET/PREFIX``; the endpoint, region and credentials come
from the standard AWS settings (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``~/.aws``), as every AWS tool reads them.

The bytes go through Optuna's ``Boto3ArtifactStore`` (``optuna``, which optuna-dashboard
reads too), under the prefix; listing (for the sweep) and the checks use the same boto3
client. Every botocore failure is turned into this project's errors here: a lost or
overloaded store is ``StoreUnavailable`` (retried, see ``store``), a refusal (no such
bucket, bad credentials, no permission) one ``ArtifactStoreError`` line naming the fix.
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, TypeVar

from search.artifacts.failures import ArtifactStoreError, StoreUnavailable

SCHEME = "s3://"
CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 30.0  # as the database's reply timeout (--reply-timeout sets both): a silent network is a lost store
# Refusals that waiting cannot fix, by S3 error code, and what to do.
FIXES = {
    "NoSuchBucket": "create the bucket, or fix its name in --artifacts",
    "404": "create the bucket, or fix its name in --artifacts",
    "AccessDenied": "grant these credentials read and write on the bucket (s3:GetObject, s3:PutObject, "
                    "s3:DeleteObject, s3:ListBucket)",
    "403": "check the credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE) and their "
           "rights on the bucket",
    "InvalidAccessKeyId": "check AWS_ACCESS_KEY_ID (or AWS_PROFILE)",
    "SignatureDoesNotMatch": "check AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)",
    "InvalidBucketName": "fix the bucket's name in --artifacts",
    "AllAccessDisabled": "grant these credentials access to the bucket",
}
T = TypeVar("T")


def parse(location: str) -> tuple[str, str]:
    """``s3://BUCKET/PREFIX`` as the bucket and the key prefix ("" or ending in "/")."""
    bucket, _, prefix = location.removeprefix(SCHEME).partition("/")
    if not bucket:
        raise ArtifactStoreError(f"--artifacts {location!r} names no bucket; use s3://BUCKET or s3://BUCKET/PREFIX")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


class PrefixedStore:
    """Optuna's artifact store protocol (what optuna-dashboard reads) over a store, with
    every artifact id under ``prefix``."""

    def __init__(self, inner: Any, prefix: str) -> None:
        self.inner = inner
        self.prefix = prefix

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return self.inner.open_reader(self.prefix + artifact_id)

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self.inner.write(self.prefix + artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        self.inner.remove(self.prefix + artifact_id)


class Bucket:
    """The backend of an ``ArtifactStore``: keys are object keys under the prefix."""

    def __init__(self, location: str, read_timeout: float = READ_TIMEOUT_S) -> None:
        import boto3
        from botocore.config import Config
        from optuna.artifacts import Boto3ArtifactStore

        self.location = location.rstrip("/")
        self.bucket, self.prefix = parse(location)
        config = Config(connect_timeout=CONNECT_TIMEOUT_S, read_timeout=read_timeout,
                        retries={"mode": "standard", "max_attempts": 2})
        try:
            self.client = boto3.client("s3", config=config)
        except Exception as error:  # a profile that does not exist, a malformed endpoint
            raise ArtifactStoreError(f"cannot use the object store for {self.location}: {first_line(error)}; "
                                     f"check AWS_ENDPOINT_URL, AWS_PROFILE and AWS_REGION") from None
        self.optuna = PrefixedStore(Boto3ArtifactStore(self.bucket, client=self.client, avoid_buf_copy=True),
                                    self.prefix)

    def where(self) -> str:
        endpoint = self.client.meta.endpoint_url
        return f"{self.location} (at {endpoint})"

    def _call(self, call: Callable[[], T], doing: str) -> T:
        """``call()``, its botocore failures turned into this project's errors."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
        from optuna.artifacts.exceptions import ArtifactNotFound

        try:
            return call()
        except ArtifactNotFound:
            raise FileNotFoundError(doing) from None
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in ("NoSuchKey",) or (status == 404 and code not in FIXES):
                raise FileNotFoundError(doing) from None
            if code in FIXES:
                raise ArtifactStoreError(f"cannot {doing} in {self.where()}: {first_line(error)}; "
                                         f"{FIXES[code]}") from None
            if status >= 500 or code in ("SlowDown", "RequestTimeout", "Throttling"):
                raise StoreUnavailable(f"{self.where()}: {first_line(error)}") from None
            raise ArtifactStoreError(f"cannot {doing} in {self.where()}: {first_line(error)}; "
                                     f"check the bucket's settings") from None
        except NoCredentialsError:
            raise ArtifactStoreError(f"no credentials for {self.where()}; set AWS_ACCESS_KEY_ID and "
                                     f"AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)") from None
        except BotoCoreError as error:  # unreachable, timed out, connection closed
            raise StoreUnavailable(f"{self.where()}: {first_line(error)}") from None

    def check(self, writable: bool = True) -> None:
        """The bucket is reached and (``writable``) takes a write, before anything is
        written anywhere else; a store that cannot be reached is a mistake here too."""
        try:
            self._call(lambda: self.client.head_bucket(Bucket=self.bucket), "reach the bucket")
            if writable:
                probe = f".probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
                self.write(probe, b"")
                self.remove(probe)
        except StoreUnavailable as lost:
            raise ArtifactStoreError(f"cannot reach the object store: {lost}; check AWS_ENDPOINT_URL and that "
                                     f"the store runs") from None
        except FileNotFoundError:
            raise ArtifactStoreError(f"no bucket {self.bucket!r} at {self.client.meta.endpoint_url}; "
                                     f"{FIXES['NoSuchBucket']}") from None

    def create(self) -> None:
        """Nothing: the bucket exists (``check``), and keys need no folders."""

    def write(self, key: str, data: bytes | memoryview) -> None:
        self._call(lambda: self.optuna.write(key, io.BytesIO(data)), f"write {key}")

    def read(self, key: str) -> bytes:
        return self._call(lambda: self.optuna.open_reader(key).read(), f"read {key}")

    def remove(self, key: str) -> None:
        self._call(lambda: self.optuna.remove(key), f"delete {key}")

    def keys(self) -> Iterator[str]:
        pages = self._call(lambda: list(self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix)), "list the bucket")
        for page in pages:
            for item in page.get("Contents", []):
                yield item["Key"][len(self.prefix):]


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
