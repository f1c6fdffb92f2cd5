#!/usr/bin/env python3
"""Generates src/stored/k8s-schema.txt: how Kubernetes' protobuf messages map to the API's JSON.

kirt decodes objects from etcd snapshots. Built-in kinds are stored as protobuf (`k8s\\0` +
runtime.Unknown), whose wire format says neither the JSON names nor which zero values the JSON
omits, nor which nested messages the JSON inlines (a Volume's VolumeSource). Those come from the Go
types' struct tags. This script joins the two — the messages and field numbers of each
`generated.proto`, the `json:` tags and pointer-ness of the Go struct of the same name — into one
small text table that kirt embeds (see src/stored/schema.rs for the format).

Usage: tools/k8s-schema.py OUT SOURCE... — each SOURCE is a directory holding the staging repos
`api`, `apimachinery`, `apiextensions-apiserver`, `kube-aggregator` (e.g. `git archive v0.36.2`
of each, or `staging/src/k8s.io` of a Kubernetes source tree). The first source wins; later ones
add the messages and fields that newer versions dropped (so that backups of older clusters decode).

Regenerate after a Kubernetes release (and commit the result):
  for r in api apimachinery apiextensions-apiserver kube-aggregator; do
    mkdir -p /tmp/k8s/$r && git -C CLONE/$r archive v0.36.2 | tar -x -C /tmp/k8s/$r; done
  tools/k8s-schema.py src/stored/k8s-schema.txt /tmp/k8s ~/.cache/kirt-lab/k8s-src/src/staging/src/k8s.io
"""

import os
import re
import sys

REPOS = ["api", "apimachinery", "apiextensions-apiserver", "kube-aggregator"]
SCALARS = {"string", "bytes", "bool", "int32", "int64", "uint32", "uint64", "double", "float", "sint32", "sint64", "fixed32", "fixed64", "sfixed32", "sfixed64"}


def proto_files(root):
    for repo in REPOS:
        base = os.path.join(root, repo)
        for d, _, files in os.walk(base):
            if "generated.proto" in files and "/testapigroup/" not in d + "/" and "/testing" not in d:
                yield os.path.join(d, "generated.proto")


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def parse_proto(path):
    """(package, {message: {tag: (name, label, type)}}) of one generated.proto."""
    text = strip_comments(open(path).read())
    pkg = re.search(r"^\s*package\s+([\w.]+)\s*;", text, re.M).group(1)
    msgs = {}
    for m in re.finditer(r"\bmessage\s+(\w+)\s*\{([^{}]*)\}", text):
        fields = {}
        for f in re.finditer(r"(optional|repeated|required)?\s*(map<\s*[\w.]+\s*,\s*[\w.]+\s*>|[\w.]+)\s+(\w+)\s*=\s*(\d+)", m.group(2)):
            label, typ, name, tag = f.group(1) or "optional", f.group(2), f.group(3), int(f.group(4))
            fields[tag] = (name, label, re.sub(r"\s+", "", typ))
        msgs[m.group(1)] = fields
    return pkg, msgs


def qualify(pkg, typ):
    if typ in SCALARS:
        return typ
    if typ.startswith("."):
        return typ[1:]
    if "." in typ:
        return typ
    return pkg + "." + typ


GO_FIELD = re.compile(r"^\s*(?:(\w+)\s+)?([^\s`]+)\s+`([^`]*)`")
TAG = re.compile(r'(\w+):"([^"]*)"')


def go_types(directory):
    """Go structs of a package: {struct: {proto tag: (json name, omitempty, omitzero, pointer, inline)}};
    the named slice types; and the API group (GroupName)."""
    structs, slices, group = {}, set(), None
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".go") or name.endswith("_test.go") or name.startswith("zz_generated") or name == "generated.pb.go":
            continue
        text = open(os.path.join(directory, name)).read()
        g = re.search(r'\bGroupName\s*=\s*"([^"]*)"', text)
        if g and group is None:
            group = g.group(1)
        for s in re.finditer(r"^type\s+(\w+)\s+\[\]\S+\s*$", text, re.M):
            slices.add(s.group(1))
        for s in re.finditer(r"^type\s+(\w+)\s+struct\s*\{\n(.*?)^\}", text, re.M | re.S):
            fields = {}
            for line in s.group(2).splitlines():
                fm = None if line.lstrip().startswith("//") else GO_FIELD.match(line)
                if not fm:
                    continue
                tags = dict(TAG.findall(fm.group(3)))
                if "protobuf" not in tags or "," not in tags["protobuf"]:
                    continue
                num = int(tags["protobuf"].split(",")[1])
                js = tags.get("json", "")
                parts = js.split(",")
                json_name = parts[0]
                opts = set(parts[1:])
                if json_name == "-":
                    continue
                inline = "inline" in opts and json_name == ""
                if not json_name and not inline:
                    json_name = fm.group(1) or fm.group(2).lstrip("*").split(".")[-1]
                fields[num] = (json_name, "omitempty" in opts, "omitzero" in opts, fm.group(2).startswith("*"), inline)
            structs[s.group(1)] = fields
    return structs, slices, group


def load(root):
    """{package: (group, version)} and {message: [(tag, json, label, type, flags)], 'list' marks}."""
    packages, messages = {}, {}
    for path in proto_files(root):
        pkg, msgs = parse_proto(path)
        structs, slices, group = go_types(os.path.dirname(path))
        version = pkg.rsplit(".", 1)[1]
        if group is not None and re.match(r"v\d", version):
            packages[pkg] = (group, version)
        for mname, pfields in msgs.items():
            full = pkg + "." + mname
            gofields = structs.get(mname, {})
            out = []
            for tag in sorted(pfields):
                pname, label, typ = pfields[tag]
                json_name, omitempty, omitzero, pointer, inline = gofields.get(tag, (pname, False, False, False, False))
                if typ.startswith("map<"):
                    k, v = typ[4:-1].split(",")
                    typ = "map<%s,%s>" % (qualify(pkg, k), qualify(pkg, v))
                else:
                    typ = qualify(pkg, typ)
                if full == "k8s.io.apimachinery.pkg.apis.meta.v1.ObjectMeta" and json_name == "creationTimestamp":
                    # omitzero here is recent; apiservers from before it (the lab's 1.20, and most clusters) serve a
                    # zero creationTimestamp (pod templates) as null, and so does the decoder
                    omitzero = False
                flags = "".join(f for f, on in (("o", omitempty), ("z", omitzero), ("p", pointer), ("i", inline)) if on) or "-"
                out.append((tag, "" if inline else json_name, label, typ, flags))
            messages[full] = (out, mname in slices and mname not in structs)
    return packages, messages


def main():
    out, sources = sys.argv[1], sys.argv[2:]
    packages, messages = {}, {}
    for root in sources:
        p, m = load(root)
        for k, v in p.items():
            packages.setdefault(k, v)
        for k, (fields, is_list) in m.items():
            if k not in messages:
                messages[k] = (fields, is_list)
                continue
            have = {f[0] for f in messages[k][0]}
            extra = [f for f in fields if f[0] not in have]
            if extra:
                messages[k] = (sorted(messages[k][0] + extra), messages[k][1])
    lines = [
        "# Generated by tools/k8s-schema.py from Kubernetes' generated.proto files and Go types",
        "# (Apache-2.0, The Kubernetes Authors): " + " ".join(os.path.abspath(s) for s in sources),
        "# package PROTO-PACKAGE GROUP VERSION | message NAME [list] | TAG JSON-NAME LABEL TYPE FLAGS",
    ]
    for pkg in sorted(packages):
        g, v = packages[pkg]
        lines.append("package %s %s %s" % (pkg, g or "-", v))
    for name in sorted(messages):
        fields, is_list = messages[name]
        lines.append("message " + name + (" list" if is_list else ""))
        for tag, js, label, typ, flags in fields:
            lines.append("%d %s %s %s %s" % (tag, js or "-", label[0], typ, flags))
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("%s: %d packages, %d messages" % (out, len(packages), len(messages)), file=sys.stderr)


if __name__ == "__main__":
    main()
