"""A test instance metadata service for one connection on stdin/stdout, as QEMU's
user-mode network runs it (guestfwd=tcp:169.254.169.254:80-cmd:...). Serves IMDSv2 tokens
and a metadata tree like EC2's (enough for the minimal image's init and for cloud-init's
EC2 datasource), from the environment: IMDS_INSTANCE_ID, IMDS_SSH_KEY, IMDS_USER_DATA.
Each request is logged to IMDS_LOG. Strato's real metadata service comes with the network."""
import json
import os
import sys

TOKEN = "strato-test-token"
IID = os.environ.get("IMDS_INSTANCE_ID", "i-0123456789abcdef0")
KEY = os.environ.get("IMDS_SSH_KEY", "")
USER_DATA = os.environ.get("IMDS_USER_DATA", "")
MAC = "52:54:00:12:34:56"
IP = "169.254.169.15"

meta = {
    "ami-id": "ami-0123456789abcdef0",
    "ami-launch-index": "0",
    "hostname": "ip-169-254-169-15.local-1.compute.internal",
    "local-hostname": "ip-169-254-169-15.local-1.compute.internal",
    "local-ipv4": IP,
    "instance-id": IID,
    "instance-type": "t3.micro",
    "mac": MAC,
    "placement": {"availability-zone": "local-1a", "region": "local-1"},
    "security-groups": "default",
    "block-device-mapping": {"ami": "/dev/xvda", "root": "/dev/xvda"},
    "services": {"domain": "amazonaws.com", "partition": "aws"},
}
if KEY:
    meta["public-keys"] = {"0": {"openssh-key": KEY}}
tree = {
    "meta-data": meta,
    "dynamic": {"instance-identity": {"document": json.dumps({
        "instanceId": IID, "imageId": meta["ami-id"], "instanceType": "t3.micro",
        "availabilityZone": "local-1a", "region": "local-1", "privateIp": IP,
        "accountId": "123456789012", "architecture": "x86_64", "version": "2017-09-30",
    })}},
}
if USER_DATA:
    tree["user-data"] = USER_DATA


def lookup(path):
    node = tree
    for part in [p for p in path.split("/") if p]:
        if not isinstance(node, dict):
            return None
        if part not in node and node is meta.get("public-keys"):
            part = part.split("=")[0]
        if part not in node:
            return None
        node = node[part]
    if isinstance(node, dict):
        if node is meta.get("public-keys"):
            return "0=test-key"
        return "\n".join(k + "/" if isinstance(v, dict) else k for k, v in node.items())
    return node


inp = sys.stdin.buffer
out = sys.stdout.buffer
line = inp.readline().decode("latin-1").strip()
if not line:
    sys.exit(0)
method, path, _ = (line.split(" ") + ["", "", ""])[:3]
headers = {}
while True:
    h = inp.readline().decode("latin-1")
    if h in ("\r\n", "\n", ""):
        break
    k, _, v = h.partition(":")
    headers[k.strip().lower()] = v.strip()
path = path.split("?")[0]
status, body = "404 Not Found", ""
if method == "PUT" and path == "/latest/api/token":
    status, body = "200 OK", TOKEN
elif method == "GET" and headers.get("x-aws-ec2-metadata-token") not in (None, TOKEN):
    status = "401 Unauthorized"
elif method == "GET" and path == "/":
    status, body = "200 OK", "1.0\n2009-04-04\n2016-09-02\n2018-09-24\n2021-03-23\nlatest"
elif method == "GET":
    parts = path.strip("/").split("/", 1)
    if parts[0] == "latest" or parts[0][:2] in ("19", "20") or parts[0] == "1.0":
        value = lookup(parts[1] if len(parts) > 1 else "")
        if value is not None:
            status, body = "200 OK", value
with open(os.environ.get("IMDS_LOG", "/dev/null"), "a") as log:
    log.write(f"{method} {path} token={'x-aws-ec2-metadata-token' in headers} -> {status}\n")
b = body.encode()
out.write(f"HTTP/1.0 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(b)}\r\nConnection: close\r\n\r\n".encode() + b)
out.flush()
