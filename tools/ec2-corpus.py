#!/usr/bin/env python3
"""Writes crates/strato/tests/data/ec2-requests.txt: for every EC2 operation, one request as
botocore's own EC2 serializer writes it, with every input member filled in (structures to a
depth of 4, below it their required members, lists of two elements, the first enum value, numbers within their range). The
unit tests of api::model decode each one, so the generated model is checked against the
real client's wire names rather than against itself.

Run from the repository root with the same botocore as tools/ec2-model.py."""
import os, sys, urllib.parse

import botocore.session
from botocore.serialize import create_serializer

OUT = os.path.join("crates", "strato", "tests", "data", "ec2-requests.txt")
DEPTH = 4


def sample(shape, depth):
    t = shape.type_name
    if t == "structure":
        # Below the depth limit only the required members are filled in (a structure that
        # is there must have them), so every request stays valid.
        required = set(shape.required_members)
        out = {}
        for name, m in shape.members.items():
            if depth <= 0 and name not in required:
                continue
            v = sample(m, depth - 1)
            if v is not None:
                out[name] = v
        return out
    if t == "list":
        v = sample(shape.member, depth)
        return None if v is None else [v, v]
    if t == "string":
        if shape.enum:
            return shape.enum[0]
        lo = shape.metadata.get("min", 1)
        return "x" * max(lo, 1)
    if t in ("integer", "long"):
        lo = shape.metadata.get("min", 1)
        return max(lo, 1)
    if t == "boolean":
        return True
    if t in ("double", "float"):
        return 1.5
    if t == "timestamp":
        return "2026-12-07T00:00:00Z"
    if t == "blob":
        return b"blob"
    raise SystemExit(f"type {t}")


def main():
    session = botocore.session.get_session()
    model = session.get_service_model("ec2")
    ser = create_serializer("ec2", include_validation=False)
    lines = [f"# botocore {botocore.__version__}: one request per operation, form-encoded"]
    for name in sorted(model.operation_names):
        op = model.operation_model(name)
        params = sample(op.input_shape, DEPTH) if op.input_shape else {}
        body = ser.serialize_to_request(params or {}, op)["body"]
        body.pop("Version", None)
        body.pop("Action", None)
        lines.append(f"{name} {urllib.parse.urlencode(sorted(body.items()))}")
    with open(OUT, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {OUT}: {len(lines) - 1} operations")


if __name__ == "__main__":
    import botocore
    main()
