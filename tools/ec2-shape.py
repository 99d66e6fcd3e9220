#!/usr/bin/env python3
"""Print the EC2 Query wire names of an operation's input and the XML names of its output,
read from botocore's service model (the spec we follow). Usage: ec2-shape.py OPERATION [DEPTH]"""
import gzip, json, os, sys
import botocore

path = os.path.join(os.path.dirname(botocore.__file__), "data", "ec2", "2016-11-15", "service-2.json")
model = json.load(gzip.open(path + ".gz")) if not os.path.exists(path) else json.load(open(path))
shapes = model["shapes"]

def wire_in(name, member):
    if "queryName" in member:
        return member["queryName"]
    if "locationName" in member:
        n = member["locationName"]
        return n[0].upper() + n[1:]
    return name

def show_in(shape_name, prefix, depth, seen):
    s = shapes[shape_name]
    t = s["type"]
    if t == "structure":
        if depth <= 0 or shape_name in seen:
            print(f"{prefix}  <{shape_name}>")
            return
        for m, spec in s["members"].items():
            w = wire_in(m, spec)
            show_in(spec["shape"], f"{prefix}.{w}" if prefix else w, depth - 1, seen | {shape_name})
    elif t == "list":
        show_in(s["member"]["shape"], prefix + ".N", depth, seen)
    else:
        extra = {k: v for k, v in s.items() if k in ("enum", "min", "max", "pattern")}
        print(f"{prefix}: {t} {extra if extra else ''}")

def show_out(shape_name, indent, depth, seen):
    s = shapes[shape_name]
    if s["type"] != "structure" or depth <= 0 or shape_name in seen:
        return
    for m, spec in s["members"].items():
        loc = spec.get("locationName", m)
        sub = shapes[spec["shape"]]
        if sub["type"] == "list":
            item = sub["member"].get("locationName", "member")
            print(f"{indent}<{loc}><{item}>  ({sub['member']['shape']})")
            show_out(sub["member"]["shape"], indent + "    ", depth - 1, seen | {shape_name})
        else:
            print(f"{indent}<{loc}>  {sub['type']}")
            show_out(spec["shape"], indent + "  ", depth - 1, seen | {shape_name})

op = model["operations"][sys.argv[1]]
depth = int(sys.argv[2]) if len(sys.argv) > 2 else 4
print("INPUT", op.get("input", {}).get("shape"))
if "input" in op:
    show_in(op["input"]["shape"], "", depth, set())
print("OUTPUT", op.get("output", {}).get("shape"))
if "output" in op:
    show_out(op["output"]["shape"], "  ", depth, set())
