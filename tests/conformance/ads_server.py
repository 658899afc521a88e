#!/usr/bin/env python3
"""A State-of-the-World ADS server built on Envoy's own protos, for tests/conformance.rs.

It loads one case of cases.yaml: public Envoy resource sets (Envoy bootstrap files, whose
static_resources become the served resources; per-type golden files as Envoy Gateway writes
them; Envoy admin config dumps as Istio's tests keep them), parses every resource with
`google.protobuf.json_format` against the descriptors of PyPI `xds-protos` (gRPC's generated
Python of envoyproxy/data-plane-api, so every `typed_config` Any is resolved and checked),
applies a derived case's patches, rewrites addresses only (each listener to 127.0.0.1 and a
free port, each endpoint to a test backend on 127.0.0.1), and serves the set over ADS.

It talks to the test on stdin/stdout, one JSON object a line:

    -> {"event": "backends", "slots": {"cluster": 2, ...}}   endpoints per cluster to back
    <- {"cluster": [port, port], ...}                        the test's backends
    -> {"event": "ready", "ads": port, "listeners": {"name": port}}
    -> {"event": "response", "type": "lds", "nonce": "1", "resources": ["a", "b"]}
    -> {"event": "request", "type": "lds", "nonce": "1", "version": "1",
        "names": [], "error": "Listener \"b\": ..." | null}

Needs grpcio and xds-protos==1.85.0 (.ci/run installs them).
"""

import argparse
import importlib
import json
import os
import pkgutil
import socket
import sys
import threading
from concurrent import futures

import grpc
import yaml
from google.protobuf import json_format

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

TYPES = {
    "lds": "type.googleapis.com/envoy.config.listener.v3.Listener",
    "rds": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
    "cds": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    "eds": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
}
SHORT = {url: short for short, url in TYPES.items()}
MESSAGES = {
    "lds": listener_pb2.Listener,
    "rds": route_pb2.RouteConfiguration,
    "cds": cluster_pb2.Cluster,
    "eds": endpoint_pb2.ClusterLoadAssignment,
}
# Config-dump sections: (dump type, list field, the resource inside each entry).
DUMP_SECTIONS = {
    "ListenersConfigDump": ("lds", "dynamic_listeners", ("active_state", "listener")),
    "RoutesConfigDump": ("rds", "dynamic_route_configs", ("route_config",)),
    "ClustersConfigDump": ("cds", "dynamic_active_clusters", ("cluster",)),
    "EndpointsConfigDump": ("eds", "dynamic_endpoint_configs", ("endpoint_config",)),
}

OUT_LOCK = threading.Lock()


def emit(obj):
    with OUT_LOCK:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def import_descriptors(doc):
    """Imports the generated modules of every `@type` the document names (all the modules of its
    proto package), so that json_format resolves each typed_config Any."""
    names = set()

    def walk(node):
        if isinstance(node, dict):
            t = node.get("@type")
            if isinstance(t, str):
                names.add(t.rsplit("/", 1)[-1].rsplit(".", 1)[0])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)
    for package in sorted(names):
        try:
            pkg = importlib.import_module(package)
        except ImportError:
            continue  # not in Envoy's protos: json_format says which type it cannot resolve
        for info in pkgutil.iter_modules(pkg.__path__, package + "."):
            if info.name.endswith("_pb2"):
                importlib.import_module(info.name)


def parse(kind, obj):
    obj, later = take_cookie_matchers(strip_type(obj))
    msg = MESSAGES[kind]()
    json_format.ParseDict(obj, msg)
    for path, wire in later:
        inject(msg, path, wire)
    return msg


# === fields newer than xds-protos 1.85.0 ===
#
# `RouteMatch.cookies` (field 17, `CookieMatcher { name = 1; string_match = 2;
# invert_match = 3 }`) came to Envoy's API after the data-plane-api snapshot that xds-protos
# 1.85.0 was generated from, and Envoy Gateway writes it. Rather than dropping it (which would
# hide the very field the test is about), it is encoded by hand and carried as an unknown field
# of its RouteMatch, which protobuf keeps and re-serializes: gofe decodes it as Envoy would.


def take_cookie_matchers(obj):
    """Removes every `match.cookies` from a JSON document; returns the document and, for each,
    its path and its wire encoding."""
    import copy

    from envoy.type.matcher.v3 import string_pb2

    obj = copy.deepcopy(obj)
    later = []

    def walk(node, path):
        if isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, path + [str(i)])
        elif isinstance(node, dict):
            if path and path[-1] == "match" and node.get("cookies"):
                wire = b""
                for c in node.pop("cookies"):
                    body = field_bytes(1, c["name"].encode())
                    sm = c.get("string_match", c.get("stringMatch"))
                    if sm is not None:
                        matcher = string_pb2.StringMatcher()
                        json_format.ParseDict(sm, matcher)
                        body += field_bytes(2, matcher.SerializeToString())
                    if c.get("invert_match", c.get("invertMatch")):
                        body += bytes([3 << 3 | 0, 1])
                    wire += field_bytes(17, body)
                later.append((path, wire))
            for k, v in node.items():
                walk(v, path + [k])

    walk(obj, [])
    return obj, later


def inject(msg, path, wire):
    """Merges `wire` into the message at `path` (JSON keys), through packed Any values."""
    from google.protobuf import symbol_database

    if msg.DESCRIPTOR.full_name == "google.protobuf.Any":
        inner = symbol_database.Default().GetSymbol(msg.TypeName())()
        msg.Unpack(inner)
        inject(inner, path, wire)
        msg.Pack(inner)
        return
    if not path:
        msg.MergeFromString(wire)
        return
    d = msg.DESCRIPTOR
    field = d.fields_by_name.get(path[0]) or d.fields_by_camelcase_name[path[0]]
    value = getattr(msg, field.name)
    if isinstance(value, (list,)) or hasattr(value, "add") or type(value).__name__.startswith("Repeated"):
        inject(value[int(path[1])], path[2:], wire)
    else:
        inject(value, path[1:], wire)


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def field_bytes(number, payload):
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def strip_type(obj):
    if isinstance(obj, dict) and "@type" in obj:
        # A resource written as an Any (config dumps): drop the wrapper's type.
        obj = {k: v for k, v in obj.items() if k != "@type"}
    return obj


def load_file(path):
    with open(path) as f:
        text = f.read()
    doc = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    import_descriptors(doc)
    return doc


def load_set(base, spec):
    """Returns {kind: [message]} for a case's `set`."""
    out = {k: [] for k in TYPES}
    fmt = spec["format"]
    if fmt == "bootstrap":
        doc = load_file(os.path.join(base, spec["file"]))
        boot = bootstrap_pb2.Bootstrap()
        json_format.ParseDict(doc, boot)
        out["lds"].extend(boot.static_resources.listeners)
        out["cds"].extend(boot.static_resources.clusters)
    elif fmt == "per_type":
        for kind, rel in spec["files"].items():
            docs = load_file(os.path.join(base, rel)) or []
            out[kind].extend(parse(kind, d) for d in docs)
    elif fmt == "config_dump":
        doc = load_file(os.path.join(base, spec["file"]))
        for section in doc.get("configs", []):
            dump_type = section.get("@type", "").rsplit(".", 1)[-1]
            if dump_type not in DUMP_SECTIONS:
                continue
            kind, field, inner = DUMP_SECTIONS[dump_type]
            for entry in section.get(field, []):
                for key in inner:
                    entry = entry.get(key, {})
                if entry:
                    out[kind].append(parse(kind, entry))
    else:
        raise SystemExit(f"unknown set format {fmt!r}")
    return out


def apply_patch(resources, patch):
    """A derived case's change: `set` a field (a dotted path of proto field names) to a value
    in the resource of `type` named `name`, or `add` a copy of a resource under a new name."""
    kind = patch["type"]
    by_name = {resource_name(kind, m): i for i, m in enumerate(resources[kind])}
    if patch["name"] not in by_name:
        raise SystemExit(f"patch: no {kind} resource {patch['name']!r}")
    index = by_name[patch["name"]]
    doc = json_format.MessageToDict(resources[kind][index], preserving_proto_field_name=True)
    if "copy_as" in patch:
        doc["name" if kind != "eds" else "cluster_name"] = patch["copy_as"]
        for path, value in patch.get("set", {}).items():
            set_path(doc, path, value)
        resources[kind].append(parse(kind, doc))
        return
    for path, value in patch.get("set", {}).items():
        set_path(doc, path, value)
    resources[kind][index] = parse(kind, doc)


def set_path(doc, path, value):
    keys = path.split(".")
    node = doc
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    elif value is None:
        node.pop(last, None)
    else:
        node[last] = value


def resource_name(kind, msg):
    return msg.cluster_name if kind == "eds" else msg.name


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def socket_addresses(address):
    """Rewrites an envoy.config.core.v3.Address in place to a socket address; returns it."""
    if not address.HasField("socket_address"):
        address.ClearField("pipe")
        address.ClearField("envoy_internal_address")
    return address.socket_address


def rewrite(resources):
    """The only change made to a real set: listeners to 127.0.0.1 and free ports, endpoints to
    the test's backends. Returns the listener ports and the endpoint slots per cluster."""
    listeners = {}
    for l in resources["lds"]:
        if l.HasField("address"):
            sa = socket_addresses(l.address)
            sa.address = "127.0.0.1"
            sa.port_value = free_port()
            listeners[l.name] = sa.port_value
    slots = {}
    assignments = [(c.name, c.load_assignment) for c in resources["cds"] if c.HasField("load_assignment")]
    assignments += [(a.cluster_name, a) for a in resources["eds"]]
    for name, cla in assignments:
        for locality in cla.endpoints:
            for lb in locality.lb_endpoints:
                if lb.HasField("endpoint"):
                    slots[name] = slots.get(name, 0) + 1
    return listeners, slots, assignments


def point_at_backends(assignments, backends):
    for name, cla in assignments:
        ports = list(backends.get(name, []))
        for locality in cla.endpoints:
            for lb in locality.lb_endpoints:
                if lb.HasField("endpoint"):
                    sa = socket_addresses(lb.endpoint.address)
                    sa.address = "127.0.0.1"
                    sa.port_value = ports.pop(0) if ports else 1
                    sa.ClearField("resolver_name")


# === impl the ADS service ===


class Ads(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self, resources):
        self.last = {}
        self.resources = {
            TYPES[k]: {resource_name(k, m): m for m in v} for k, v in resources.items()
        }

    def StreamAggregatedResources(self, request_iterator, context):
        nonce = 0
        for req in request_iterator:
            short = SHORT.get(req.type_url)
            emit(
                {
                    "event": "request",
                    "type": short or req.type_url,
                    "nonce": req.response_nonce,
                    "version": req.version_info,
                    "names": list(req.resource_names),
                    "error": req.error_detail.message if req.HasField("error_detail") else None,
                }
            )
            if short is None:
                continue
            # SotW: a request answering our last response with the same subscription is an
            # ACK or NACK and gets no new response; a new subscription gets the current set.
            names = tuple(sorted(req.resource_names))
            if req.response_nonce and self.last.get(short) == (req.response_nonce, names):
                continue
            pool = self.resources[req.type_url]
            chosen = [pool[n] for n in names if n in pool] if names else list(pool.values())
            nonce += 1
            self.last[short] = (str(nonce), names)
            resp = discovery_pb2.DiscoveryResponse(
                version_info="1", type_url=req.type_url, nonce=str(nonce)
            )
            for m in chosen:
                resp.resources.add().Pack(m)
            emit(
                {
                    "event": "response",
                    "type": short,
                    "nonce": str(nonce),
                    "resources": [resource_name(short, m) for m in chosen],
                }
            )
            yield resp


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--case", required=True)
    ap.add_argument("--dump", action="store_true", help="print the served set and exit")
    args = ap.parse_args()
    base = os.path.dirname(os.path.abspath(args.manifest))
    with open(args.manifest) as f:
        cases = {c["name"]: c for c in yaml.safe_load(f)["cases"]}
    case = cases[args.case]
    spec = case
    patches = []
    while "derived_from" in spec:
        patches = spec.get("patches", []) + patches
        spec = cases[spec["derived_from"]]
    resources = load_set(base, spec["set"])
    for p in patches:
        import_descriptors(p)
        apply_patch(resources, p)
    listeners, slots, assignments = rewrite(resources)
    emit({"event": "backends", "slots": slots})
    backends = json.loads(sys.stdin.readline())
    point_at_backends(assignments, backends)
    if args.dump:
        for k, v in resources.items():
            for m in v:
                print(k, json.dumps(json_format.MessageToDict(m, preserving_proto_field_name=True)))
        return
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(Ads(resources), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    emit({"event": "ready", "ads": port, "listeners": listeners})
    # The test closes stdin (or dies) when it is done with this case.
    sys.stdin.read()
    server.stop(0)


if __name__ == "__main__":
    main()
