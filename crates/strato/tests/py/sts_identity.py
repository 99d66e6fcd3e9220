"""STS GetCallerIdentity through boto3 (Query form) and by hand in the JSON 1.0 form.
Usage: sts_identity.py ACCOUNT"""
import json
import os
import sys
import urllib.request

import boto3
import botocore.auth
import botocore.awsrequest

account = sys.argv[1]
endpoint = os.environ["STRATO_ENDPOINT"]
session = boto3.Session()
sts = session.client("sts", endpoint_url=endpoint)
who = sts.get_caller_identity()
assert who["Account"] == account, who
assert who["Arn"] == f"arn:aws:iam::{account}:root", who

# The JSON 1.0 protocol: the same identity.
req = botocore.awsrequest.AWSRequest(
    method="POST",
    url=endpoint + "/",
    data=b"{}",
    headers={
        "Content-Type": "application/x-amz-json-1.0",
        "X-Amz-Target": "AWSSecurityTokenServiceV20110615.GetCallerIdentity",
    },
)
botocore.auth.SigV4Auth(session.get_credentials(), "sts", session.region_name).add_auth(req)
prepared = req.prepare()
with urllib.request.urlopen(urllib.request.Request(prepared.url, data=prepared.body, headers=dict(prepared.headers), method="POST")) as r:
    body = json.loads(r.read())
assert body == {"Account": account, "Arn": f"arn:aws:iam::{account}:root", "UserId": account}, body
print("ok")
