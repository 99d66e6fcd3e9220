"""boto3 against a running strato serve: resources, paginators, errors, presigned URLs.
Run by tests/boto3.rs with AWS_CONFIG_FILE/AWS_PROFILE pointing at the cloud."""
import os
import urllib.request
import urllib.error

import boto3
import botocore.exceptions

ec2 = boto3.client("ec2")
assert ec2.meta.region_name == "local-1", ec2.meta.region_name
assert ec2.meta.endpoint_url == os.environ["STRATO_ENDPOINT"], ec2.meta.endpoint_url


def code_of(fn, **kw):
    try:
        fn(**kw)
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]
    raise AssertionError(f"{fn.__name__} should have failed")


# Default VPC, subnets and group, as every account has them.
vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}] if False else [])["Vpcs"]
default_vpc = [v for v in vpcs if v["IsDefault"]][0]
assert default_vpc["CidrBlock"] == "172.31.0.0/16"
subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [default_vpc["VpcId"]]}])["Subnets"]
assert sorted(s["AvailabilityZone"] for s in subnets) == ["local-1a", "local-1b", "local-1c"]
assert all(s["DefaultForAz"] for s in subnets)

# ClientToken-free creates with tags; boto3 serialises TagSpecifications itself.
sg = ec2.create_security_group(
    GroupName="boto", Description="from boto3",
    TagSpecifications=[{"ResourceType": "security-group", "Tags": [{"Key": "k", "Value": "v"}]}],
)
gid = sg["GroupId"]
r = ec2.authorize_security_group_ingress(
    GroupId=gid,
    IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "127.0.0.0/8", "Description": "ssh"}]},
        {"IpProtocol": "icmp", "FromPort": -1, "ToPort": -1, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
    ],
)
assert len(r["SecurityGroupRules"]) == 2
rule_ids = [x["SecurityGroupRuleId"] for x in r["SecurityGroupRules"]]
g = ec2.describe_security_groups(GroupIds=[gid])["SecurityGroups"][0]
assert g["Tags"] == [{"Key": "k", "Value": "v"}]
ssh = [p for p in g["IpPermissions"] if p["IpProtocol"] == "tcp"][0]
assert ssh["IpRanges"] == [{"CidrIp": "127.0.0.0/8", "Description": "ssh"}], ssh
r = ec2.revoke_security_group_ingress(GroupId=gid, SecurityGroupRuleIds=[rule_ids[1]])
assert r["Return"] is True and r["RevokedSecurityGroupRules"][0]["SecurityGroupRuleId"] == rule_ids[1]
rules = ec2.describe_security_group_rules(SecurityGroupRuleIds=[rule_ids[0]])["SecurityGroupRules"]
assert rules[0]["CidrIpv4"] == "127.0.0.0/8" and rules[0]["IsEgress"] is False

# Errors: codes and statuses as botocore expects them.
assert code_of(ec2.describe_security_groups, GroupIds=["sg-0123456789abcdef0"]) == ("InvalidGroup.NotFound", 400)
assert code_of(ec2.delete_vpc, VpcId="vpc-bad") == ("InvalidVpcID.Malformed", 400)
assert code_of(ec2.create_security_group, GroupName="x", Description="d", DryRun=True) == ("DryRunOperation", 412)
assert code_of(ec2.delete_security_group, GroupId=gid, DryRun=True) == ("DryRunOperation", 412)
assert ec2.describe_security_groups(GroupIds=[gid])["SecurityGroups"], "dry run deleted nothing"

# Paginators follow NextToken.
for i in range(12):
    ec2.create_security_group(GroupName=f"p{i}", Description="page")
pages = list(ec2.get_paginator("describe_security_groups").paginate(PaginationConfig={"PageSize": 5}))
assert len(pages) == 3, len(pages)
ids = [g["GroupId"] for p in pages for g in p["SecurityGroups"]]
assert len(ids) == len(set(ids)) == 14, len(ids)
tags = list(ec2.get_paginator("describe_tags").paginate())
assert any(t["ResourceId"] == gid for p in tags for t in p["Tags"])

# Key pairs: create, import the same public key again, delete.
k = ec2.create_key_pair(KeyName="bk", KeyType="ed25519")
pub = ec2.describe_key_pairs(KeyNames=["bk"], IncludePublicKey=True)["KeyPairs"][0]["PublicKey"]
imp = ec2.import_key_pair(KeyName="bk2", PublicKeyMaterial=pub.encode())
assert imp["KeyFingerprint"] == k["KeyFingerprint"]
assert code_of(ec2.import_key_pair, KeyName="bk2", PublicKeyMaterial=pub.encode()) == ("InvalidKeyPair.Duplicate", 400)

# A presigned URL (SigV4 in the query string) works, with the method it was signed for, and
# any change to it breaks the signature.
url = ec2.generate_presigned_url("describe_regions", Params={}, ExpiresIn=60, HttpMethod="GET")
assert "X-Amz-Signature=" in url
with urllib.request.urlopen(url) as resp:
    body = resp.read().decode()
    assert resp.status == 200 and "<regionName>local-1</regionName>" in body, body
# botocore signs EC2 URLs for POST unless told otherwise: POST them with an empty body.
post_url = ec2.generate_presigned_url("describe_availability_zones", Params={"ZoneNames": ["local-1b"]}, ExpiresIn=60)
with urllib.request.urlopen(urllib.request.Request(post_url, data=b"", method="POST")) as resp:
    body = resp.read().decode()
    assert "<zoneName>local-1b</zoneName>" in body and "local-1a" not in body, body
for bad in [url.replace("Action=DescribeRegions", "Action=DescribeVpcs"), post_url]:
    try:
        urllib.request.urlopen(bad)  # the first is altered, the second is a GET of a POST URL
        raise AssertionError("a changed presigned URL must fail")
    except urllib.error.HTTPError as e:
        assert e.code == 401 and "<Code>AuthFailure</Code>" in e.read().decode()
# Images: Strato's own, found by owner alias and name, and the image_available waiter.
imgs = ec2.describe_images(Owners=["strato"], Filters=[{"Name": "name", "Values": ["strato-minimal-*"]}])["Images"]
assert len(imgs) == 1 and imgs[0]["ImageOwnerAlias"] == "strato" and imgs[0]["State"] == "available", imgs
ec2.get_waiter("image_available").wait(ImageIds=[imgs[0]["ImageId"]], WaiterConfig={"Delay": 1, "MaxAttempts": 3})
assert code_of(ec2.describe_images, ImageIds=["ami-0123456789abcdef0"]) == ("InvalidAMIID.NotFound", 400)
pages = list(ec2.get_paginator("describe_images").paginate(Owners=["strato"], PaginationConfig={"PageSize": 5}))
assert sum(len(p["Images"]) for p in pages) >= 1
print("boto3 flow ok")
