"""Apache Libcloud's EC2 driver, unmodified, against Strato: locations, sizes, an image, a key
pair, a node (created, running, listed), a volume created and attached, then everything
destroyed. Usage: libcloud_flow.py REGION SIGNATURE_VERSION (2 or 4)."""
import configparser
import os
import sys
import time
import urllib.parse

from libcloud.compute.providers import get_driver
from libcloud.compute.types import NodeState, Provider

region, version = sys.argv[1], sys.argv[2]
cfg = configparser.ConfigParser()
cfg.read(os.environ["AWS_CONFIG_FILE"])
profile = cfg["profile strato"]
endpoint = urllib.parse.urlsplit(os.environ["STRATO_ENDPOINT"])

cls = get_driver(Provider.EC2)
driver = cls(
    profile["aws_access_key_id"],
    profile["aws_secret_access_key"],
    region=region,
    host=endpoint.hostname,
    port=endpoint.port,
    secure=False,
    signature_version=version,
)
assert driver.signature_version == version

locations = driver.list_locations()
zones = sorted(l.availability_zone.name for l in locations)
assert zones == [f"{region}a", f"{region}b", f"{region}c"], zones

sizes = {s.id: s for s in driver.list_sizes()}
assert "t3.micro" in sizes and "m1.small" in sizes, sorted(sizes)[:20]

images = driver.list_images(ex_owner="self")
images += driver.list_images(ex_filters={"name": "strato-minimal*"})
assert images, "Strato's minimal image is listed"
image = driver.get_image(images[0].id)
assert image.id == images[0].id

suffix = f"{version}-{os.getpid()}"
pub = open(os.environ["PUBKEY"]).read().strip()
kp = driver.import_key_pair_from_string(f"lc-{suffix}", pub)
assert kp.name == f"lc-{suffix}"
assert any(k.name == kp.name for k in driver.list_key_pairs())

node = driver.create_node(
    name=f"node-{suffix}",
    size=sizes["t3.micro"],
    image=image,
    location=[l for l in locations if l.availability_zone.name == f"{region}a"][0],
    ex_keyname=kp.name,
)
assert node.name == f"node-{suffix}", node.name
(node, _), = driver.wait_until_running([node], wait_period=1, timeout=120)
assert node.state == NodeState.RUNNING, node.state
listed = [n for n in driver.list_nodes() if n.id == node.id]
assert listed and listed[0].name == node.name and listed[0].state == NodeState.RUNNING, listed
assert listed[0].extra["instance_type"] == "t3.micro"

vol = driver.create_volume(1, f"vol-{suffix}", location=[l for l in locations if l.availability_zone.name == f"{region}a"][0])
for _ in range(60):
    vol = [v for v in driver.list_volumes() if v.id == vol.id][0]
    if vol.extra["state"] == "available":
        break
    time.sleep(0.5)
assert vol.name == f"vol-{suffix}", vol.name
assert driver.attach_volume(node, vol, "/dev/sdf")
for _ in range(120):
    vol = [v for v in driver.list_volumes() if v.id == vol.id][0]
    if vol.extra["state"] == "in-use":
        break
    time.sleep(0.5)
assert vol.extra["state"] == "in-use", vol.extra
assert vol.extra["instance_id"] == node.id, vol.extra
assert driver.detach_volume(vol)
for _ in range(120):
    vol = [v for v in driver.list_volumes() if v.id == vol.id][0]
    if vol.extra["state"] == "available":
        break
    time.sleep(0.5)
assert driver.destroy_volume(vol)

assert driver.destroy_node(node)
for _ in range(120):
    gone = [n for n in driver.list_nodes() if n.id == node.id]
    if not gone or gone[0].state == NodeState.TERMINATED:
        break
    time.sleep(0.5)
assert driver.delete_key_pair(kp)
print("ok")
