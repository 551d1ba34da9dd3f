#!/usr/bin/env python3
"""IAM auth tokens for ElastiCache / MemoryDB computed with botocore, the way AWS's sample code
(ElastiCacheIAMProvider in the ElastiCache user guide) generates them, at a fixed signing time.

    python3 tests/data/iam/botocore_vectors.py
        prints the vectors committed in src/auth/iam.rs (botocore_vectors), one JSON object a line

    python3 tests/data/iam/botocore_vectors.py --at 2025-01-01T00:00:00Z --cache NAME --user U \
        --region R [--service elasticache|memorydb] [--serverless] --key AKID --secret S [--token T]
        prints one token (tests/cli.rs compares it with `ectunnel iam-token`)
"""

import argparse
import datetime
import json
from unittest import mock
from urllib.parse import ParseResult, urlencode, urlunparse

import botocore.auth
import botocore.credentials
import botocore.hooks
from botocore.model import ServiceId
from botocore.signers import RequestSigner

VECTORS = [
    dict(at="2025-01-01T00:00:00Z", cache="my-replication-group-id", user="my-user-id",
         region="eu-west-1", service="elasticache", serverless=False,
         key="fakeAccessKeyId", secret="fakeSecretKey", token=None),
    dict(at="2024-06-30T12:34:56Z", cache="sess-cache", user="app-user",
         region="us-east-1", service="elasticache", serverless=False,
         key="ASIAEXAMPLEKEY123456", secret="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
         token="IQoJb3JpZ2luX2VjEXAMPLE/session+token=="),
    dict(at="2025-03-15T08:00:00Z", cache="my-serverless-cache", user="iam-user-01",
         region="ap-southeast-2", service="elasticache", serverless=True,
         key="AKIAIOSFODNN7EXAMPLE", secret="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", token=None),
    dict(at="2025-07-04T23:59:59Z", cache="my-memorydb-cluster", user="mdb-user",
         region="eu-central-1", service="memorydb", serverless=False,
         key="AKIAIOSFODNN7EXAMPLE", secret="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", token=None),
]


def token(at, cache, user, region, service, serverless, key, secret, token):
    when = datetime.datetime.strptime(at, "%Y-%m-%dT%H:%M:%SZ")
    emitter = botocore.hooks.HierarchicalEmitter()  # the signer only keeps a weak reference
    signer = RequestSigner(
        ServiceId(service), region, service, "v4",
        botocore.credentials.Credentials(key, secret, token), emitter,
    )
    query = {"Action": "connect", "User": user}
    if serverless:
        query["ResourceType"] = "ServerlessCache"
    url = urlunparse(ParseResult(scheme="https", netloc=cache, path="/", params="",
                                 query=urlencode(query), fragment=""))
    with mock.patch.object(botocore.auth, "get_current_datetime", lambda *a, **k: when):
        signed = signer.generate_presigned_url(
            {"method": "GET", "url": url, "body": {}, "headers": {}, "context": {}},
            operation_name="connect", expires_in=900, region_name=region)
    return signed.removeprefix("https://")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--at")
    p.add_argument("--cache")
    p.add_argument("--user")
    p.add_argument("--region")
    p.add_argument("--service", default="elasticache")
    p.add_argument("--serverless", action="store_true")
    p.add_argument("--key")
    p.add_argument("--secret")
    p.add_argument("--token")
    a = p.parse_args()
    if a.at is None:
        for v in VECTORS:
            print(json.dumps(dict(v, result=token(**v))))
    else:
        print(token(a.at, a.cache, a.user, a.region, a.service, a.serverless,
                    a.key, a.secret, a.token))


if __name__ == "__main__":
    main()
