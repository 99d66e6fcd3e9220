"""A test instance metadata service for one connection on stdin/stdout, as QEMU's
user-mode network runs it (guestfwd=tcp:169.254.169.254:80-cmd:...). Serves IMDSv2 tokens
and the few paths the images read, from the environment: IMDS_INSTANCE_ID, IMDS_SSH_KEY,
IMDS_USER_DATA. Each request is logged to IMDS_LOG."""
import os
import sys

TOKEN = "strato-test-token"
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
data = {
    "/latest/meta-data/instance-id": os.environ.get("IMDS_INSTANCE_ID", "i-0123456789abcdef0"),
    "/latest/meta-data/local-hostname": "ip-10-0-2-15.local-1.compute.internal",
    "/latest/meta-data/public-keys/0/openssh-key": os.environ.get("IMDS_SSH_KEY", ""),
    "/latest/user-data": os.environ.get("IMDS_USER_DATA", ""),
}
if method == "PUT" and path == "/latest/api/token":
    status, body = "200 OK", TOKEN
elif method == "GET" and path in data and (headers.get("x-aws-ec2-metadata-token") in (None, TOKEN)):
    status, body = ("200 OK", data[path]) if data[path] else ("404 Not Found", "")
else:
    status, body = "404 Not Found", ""
with open(os.environ.get("IMDS_LOG", "/dev/null"), "a") as log:
    log.write(f"{method} {path} token={'x-aws-ec2-metadata-token' in headers} -> {status}\n")
b = body.encode()
out.write(f"HTTP/1.0 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(b)}\r\n\r\n".encode() + b)
out.flush()
