"""boto3's Cost Explorer client against Strato: one account's costs, grouped and filtered.
Argument: the instance id that has run."""
import datetime
import os
import sys

import boto3
import botocore.exceptions

iid = sys.argv[1]
ce = boto3.client("ce")
today = datetime.date.today()
start = today.replace(day=1).isoformat()
end = (today + datetime.timedelta(days=1)).isoformat()

r = ce.get_cost_and_usage(TimePeriod={"Start": start, "End": end}, Granularity="MONTHLY", Metrics=["UnblendedCost", "UsageQuantity"])
total = float(r["ResultsByTime"][0]["Total"]["UnblendedCost"]["Amount"])
assert total > 0 and r["ResultsByTime"][0]["Total"]["UnblendedCost"]["Unit"] == "USD", r

r = ce.get_cost_and_usage(
    TimePeriod={"Start": start, "End": end},
    Granularity="DAILY",
    Metrics=["UnblendedCost"],
    GroupBy=[{"Type": "DIMENSION", "Key": "RESOURCE_ID"}],
)
keys = [g["Keys"][0] for day in r["ResultsByTime"] for g in day["Groups"]]
assert iid in keys, keys

r = ce.get_cost_and_usage(
    TimePeriod={"Start": start, "End": end},
    Granularity="MONTHLY",
    Metrics=["UsageQuantity"],
    GroupBy=[{"Type": "DIMENSION", "Key": "INSTANCE_TYPE"}],
    Filter={"Dimensions": {"Key": "SERVICE", "Values": ["Amazon Elastic Compute Cloud - Compute"]}},
)
groups = r["ResultsByTime"][0]["Groups"]
assert [g["Keys"] for g in groups] == [["t3.micro"]], groups
assert groups[0]["Metrics"]["UsageQuantity"]["Unit"] == "Hrs"

try:
    ce.get_cost_and_usage(TimePeriod={"Start": end, "End": start}, Granularity="DAILY", Metrics=["UnblendedCost"])
    raise AssertionError("an inverted period must fail")
except botocore.exceptions.ClientError as e:
    assert e.response["Error"]["Code"] == "ValidationException", e.response
print("ce ok")
