"""Cluster specs: devices, the nodes they sit in, and the links between them.

A spec is YAML or JSON, validated into frozen dataclasses; every error names the field and
the value. Link endpoints are devices or nodes (a node stands for its switch or NIC, so
"gpu0 <-> node0" is gpu0's NVLink into the node's NVSwitch and "node0 <-> node1" the network
between nodes). Example (the shipped ``h200-cpu``)::

    name: h200-cpu
    nodes: [{name: node0}]
    devices:
      - {name: gpu0, kind: gpu, node: node0, cost_device: nvidia-h200, memory_bytes: 1.3e11}
      - {name: cpu0, kind: cpu, node: node0, cost_device: cpu-16core, memory_bytes: 2.0e11,
         always_on: true}
    links:
      - {a: gpu0, b: cpu0, bandwidth_bytes_per_s: 5.5e10, energy_j_per_byte: 6.0e-11,
         latency_s: 1.0e-5}
    token_home: [gpu0]

`token_home` lists the devices where tokens live between MoE layers (where attention runs);
tokens are spread evenly over them, and an expert's cost on a device includes sending its
tokens there from their home and back. Default: every GPU (every device if there is none).
Shipped specs live in `wattmoe/placement/clusters/` and load by name.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
import operator
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wattmoe.checks import check_positive_int
from wattmoe.errors import ConfigError

DEVICE_KINDS: tuple[str, ...] = ("gpu", "cpu")
CLUSTERS_DIR = Path(__file__).parent / "clusters"

_DEVICE_KEYS = {"name", "kind", "node", "cost_device", "memory_bytes", "power_budget_w",
                "always_on"}
_LINK_KEYS = {"a", "b", "bandwidth_bytes_per_s", "energy_j_per_byte", "latency_s"}
_NODE_KEYS = {"name"}
_TOP_KEYS = {"name", "description", "nodes", "devices", "links", "token_home"}


@dataclass(frozen=True)
class NodeSpec:
    """A machine (server, laptop) or a switch. Its name is also a link endpoint (its switch or
    NIC); a node without devices is just a switch."""

    name: str


@dataclass(frozen=True)
class DeviceSpec:
    """One device that can host experts.

    Attributes:
        name: unique name ('gpu0').
        kind: 'gpu' or 'cpu'.
        node: the node it sits in.
        cost_device: the cost-model device whose curves it follows ('nvidia-h200').
        memory_bytes: memory available for expert weights.
        power_budget_w: optional power cap; the device is throttled to stay under it.
        always_on: its idle power counts even when it hosts no expert (a host CPU); token
            home devices are always on too.
    """

    name: str
    kind: str
    node: str
    cost_device: str
    memory_bytes: int
    power_budget_w: float | None = None
    always_on: bool = False


@dataclass(frozen=True)
class LinkSpec:
    """A bidirectional link between two endpoints (devices or nodes).

    Attributes:
        a, b: endpoint names.
        bandwidth_bytes_per_s: bandwidth each way.
        energy_j_per_byte: energy to move one byte across it.
        latency_s: fixed latency of one message.
    """

    a: str
    b: str
    bandwidth_bytes_per_s: float
    energy_j_per_byte: float
    latency_s: float


@dataclass(frozen=True)
class ClusterSpec:
    """A validated cluster: build with `cluster_from_dict` or `load_cluster`."""

    name: str
    nodes: tuple[NodeSpec, ...]
    devices: tuple[DeviceSpec, ...]
    links: tuple[LinkSpec, ...]
    token_home: tuple[str, ...]
    description: str = ""

    @property
    def device_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.devices)

    def device(self, name: str) -> DeviceSpec:
        for d in self.devices:
            if d.name == name:
                return d
        raise ConfigError(f"cluster {self.name!r} has no device {name!r} "
                          f"(devices: {', '.join(self.device_names)})")

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain data (what `cluster_from_dict` reads back)."""

        def dev(d: DeviceSpec) -> dict[str, Any]:
            out: dict[str, Any] = {"name": d.name, "kind": d.kind, "node": d.node,
                                   "cost_device": d.cost_device,
                                   "memory_bytes": d.memory_bytes}
            if d.power_budget_w is not None:
                out["power_budget_w"] = d.power_budget_w
            if d.always_on:
                out["always_on"] = True
            return out

        return {
            "name": self.name,
            "description": self.description,
            "nodes": [{"name": n.name} for n in self.nodes],
            "devices": [dev(d) for d in self.devices],
            "links": [{"a": lk.a, "b": lk.b, "bandwidth_bytes_per_s": lk.bandwidth_bytes_per_s,
                       "energy_j_per_byte": lk.energy_j_per_byte, "latency_s": lk.latency_s}
                      for lk in self.links],
            "token_home": list(self.token_home),
        }


# --- validation -----------------------------------------------------------------------------


def _number(where: str, field: str, value: Any, *, positive: bool = True) -> float:
    """A finite float (numeric strings such as '141e9' are accepted: YAML 1.1 reads them as
    text), > 0 if `positive` else >= 0. The message echoes the value as given."""
    given = value
    if isinstance(value, bool):
        value = None
    if isinstance(value, int) and abs(value) > sys.float_info.max:  # (was an OverflowError)
        raise ConfigError(f"{where}: field {field} must be a finite number, got an integer of "
                          f"{len(str(abs(value)))} digits (beyond float range)")
    if isinstance(value, str):
        try:
            value = float(value.replace("_", ""))
        except ValueError:
            value = None
    if not isinstance(value, int | float) or not math.isfinite(value) or \
            (value <= 0 if positive else value < 0):
        need = "a positive number" if positive else "a number >= 0"
        raise ConfigError(f"{where}: field {field} must be {need}, got {given!r}")
    return float(value)


def _name(where: str, field: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: field {field} must be a non-empty string, got {value!r}")
    return value.strip()


def _check_keys(where: str, d: Any, allowed: set[str], required: Sequence[str]) -> None:
    if not isinstance(d, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {type(d).__name__}")
    # (by text: YAML reads `1:` or `null:` as a non-string key, and mixed types do not sort)
    unknown = sorted(set(d) - allowed, key=str)
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), sorted(allowed), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{where}: unknown field {unknown[0]!r}{hint}; "
                          f"allowed: {', '.join(sorted(allowed))}")
    for key in required:
        if key not in d:
            raise ConfigError(f"{where}: missing field {key!r}")


def _list(where: str, value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ConfigError(f"{where} must be a list, got {type(value).__name__}")
    return list(value)


def cluster_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> ClusterSpec:
    """Validates plain data (parsed YAML/JSON) into a `ClusterSpec`.

    Raises:
        ConfigError: one message naming the field and value that is wrong.
    """
    where = f"cluster spec {source}"
    _check_keys(where, data, _TOP_KEYS, ("devices",))
    name = _name(where, "name", data.get("name", Path(source).stem))

    devices: list[DeviceSpec] = []
    seen: set[str] = set()
    for i, d in enumerate(_list(f"{where}: devices", data.get("devices"))):
        w = f"{where}: devices[{i}]"
        _check_keys(w, d, _DEVICE_KEYS, ("name", "kind", "cost_device", "memory_bytes"))
        dname = _name(w, "name", d["name"])
        w = f"{where}: device {dname!r}"
        if dname in seen:
            raise ConfigError(f"{w}: duplicate device name")
        seen.add(dname)
        kind = str(d["kind"]).lower()
        if kind not in DEVICE_KINDS:
            raise ConfigError(f"{w}: field kind must be one of {DEVICE_KINDS}, got {d['kind']!r}")
        budget = d.get("power_budget_w")
        always_on = d.get("always_on", False)
        if not isinstance(always_on, bool):
            raise ConfigError(f"{w}: field always_on must be true or false, got {always_on!r}")
        devices.append(DeviceSpec(
            name=dname, kind=kind, node=_name(w, "node", d.get("node", "node0")),
            cost_device=_name(w, "cost_device", d["cost_device"]),
            memory_bytes=int(_number(w, "memory_bytes", d["memory_bytes"])),
            power_budget_w=None if budget is None else _number(w, "power_budget_w", budget),
            always_on=always_on,
        ))
    if not devices:
        raise ConfigError(f"{where}: field devices must list at least one device")

    raw_nodes = _list(f"{where}: nodes", data.get("nodes"))
    if raw_nodes:
        nodes = []
        for i, n in enumerate(raw_nodes):
            n = {"name": n} if isinstance(n, str) else n
            _check_keys(f"{where}: nodes[{i}]", n, _NODE_KEYS, ("name",))
            nodes.append(NodeSpec(_name(f"{where}: nodes[{i}]", "name", n["name"])))
    else:
        nodes = [NodeSpec(n) for n in dict.fromkeys(d.node for d in devices)]
    node_names = [n.name for n in nodes]
    if len(set(node_names)) != len(node_names):
        dup = next(n for n in node_names if node_names.count(n) > 1)
        raise ConfigError(f"{where}: duplicate node name {dup!r}")
    for n in node_names:
        if n in seen:
            raise ConfigError(f"{where}: node {n!r} has the same name as a device")
    for d in devices:
        if d.node not in node_names:
            raise ConfigError(f"{where}: device {d.name!r}: field node names unknown node "
                              f"{d.node!r} (nodes: {', '.join(node_names)})")

    endpoints = {*seen, *node_names}
    links: list[LinkSpec] = []
    pairs: set[frozenset[str]] = set()
    for i, lk in enumerate(_list(f"{where}: links", data.get("links"))):
        w = f"{where}: links[{i}]"
        _check_keys(w, lk, _LINK_KEYS, tuple(sorted(_LINK_KEYS)))
        a, b = _name(w, "a", lk["a"]), _name(w, "b", lk["b"])
        w = f"{where}: link {a}-{b}"
        for field, end in (("a", a), ("b", b)):
            if end not in endpoints:
                close = difflib.get_close_matches(end, sorted(endpoints), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"{w}: field {field} names unknown device or node {end!r}"
                                  f"{hint} (known: {', '.join(sorted(endpoints))})")
        if a == b:
            raise ConfigError(f"{w}: a link must join two different endpoints")
        if frozenset((a, b)) in pairs:
            raise ConfigError(f"{w}: duplicate link")
        pairs.add(frozenset((a, b)))
        links.append(LinkSpec(
            a, b, _number(w, "bandwidth_bytes_per_s", lk["bandwidth_bytes_per_s"]),
            _number(w, "energy_j_per_byte", lk["energy_j_per_byte"], positive=False),
            _number(w, "latency_s", lk["latency_s"], positive=False),
        ))

    gpus = [d.name for d in devices if d.kind == "gpu"]
    home_raw = data.get("token_home")
    home = [_name(f"{where}: token_home", "token_home", h)
            for h in _list(f"{where}: token_home", home_raw)] if home_raw is not None \
        else (gpus or [d.name for d in devices])
    if not home:
        raise ConfigError(f"{where}: field token_home must name at least one device")
    for h in home:
        if h not in seen:
            raise ConfigError(f"{where}: field token_home names unknown device {h!r} "
                              f"(devices: {', '.join(d.name for d in devices)})")
        if home.count(h) > 1:  # was: dropped unsaid (tokens are spread over the homes)
            raise ConfigError(f"{where}: field token_home lists device {h!r} more than once")
    spec = ClusterSpec(name=name, nodes=tuple(nodes), devices=tuple(devices), links=tuple(links),
                       token_home=tuple(home),
                       description=str(data.get("description") or ""))
    _check_connected(spec, where)
    return spec


def _check_connected(spec: ClusterSpec, where: str) -> None:
    """Every device must reach every token home over links (tokens travel there and back)."""
    adj: dict[str, set[str]] = {}
    for lk in spec.links:
        adj.setdefault(lk.a, set()).add(lk.b)
        adj.setdefault(lk.b, set()).add(lk.a)
    home = spec.token_home[0]
    reach, stack = {home}, [home]
    while stack:
        for nxt in adj.get(stack.pop(), ()):
            if nxt not in reach:
                reach.add(nxt)
                stack.append(nxt)
    for d in spec.devices:
        if d.name not in reach:
            raise ConfigError(f"{where}: device {d.name!r} has no link path to token home "
                              f"{home!r}; add a link (links: a, b, bandwidth_bytes_per_s, "
                              "energy_j_per_byte, latency_s)")


# --- loading (the edge: the only file I/O of the package) ------------------------------------


def shipped_clusters() -> list[str]:
    """Names of the cluster specs shipped with wattmoe."""
    return sorted(p.stem for p in CLUSTERS_DIR.glob("*.yaml"))


class _DuplicateKeyError(Exception):
    """A mapping of a spec file names one key twice (YAML and JSON parsers keep the last)."""


def _duplicate(key: Any, where: str = "") -> _DuplicateKeyError:
    return _DuplicateKeyError(f"duplicate key {key!r}{where}: each field may be given once (the "
                              "parser would silently keep the last one)")


def _unique_keys_dict(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """`json.loads`' object_pairs_hook: a mapping with a repeated key is an error."""
    out: dict[Any, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _duplicate(key)
        out[key] = value
    return out


def _yaml_load_unique(text: str) -> Any:
    """`yaml.safe_load`, but a mapping with a repeated key is a `_DuplicateKeyError`."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` then a key of base again overrides it on purpose
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise _duplicate(key, f" (line {key_node.start_mark.line + 1})")
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader subclass: safe


def _yaml_problem(exc: BaseException) -> str | None:
    """A YAML parse error's context and problem with their lines, on one line (the first
    line of `str(exc)` alone, e.g. 'while scanning a simple key', said neither); None for
    any other error."""
    problem = getattr(exc, "problem", None)
    if problem is None:
        return None
    parts = []
    for text, mark in ((getattr(exc, "context", None), getattr(exc, "context_mark", None)),
                       (problem, getattr(exc, "problem_mark", None))):
        if text:
            where = (f" (line {mark.line + 1}, column {mark.column + 1})"
                     if mark is not None else "")
            parts.append(f"{text}{where}")
    return ": ".join(parts)


def read_spec_file(path: str | Path) -> dict[str, Any]:
    """Parses a YAML (.yaml/.yml) or JSON file into plain data."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # (a byte-order mark, as Notepad writes)
    except OSError as exc:
        raise ConfigError(f"cannot read cluster spec {str(path)!r}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:  # a ValueError, not an OSError: was a traceback
        raise ConfigError(f"cluster spec {str(path)!r} is not UTF-8 text: byte "
                          f"{exc.object[exc.start]:#04x} at position {exc.start}; save it as "
                          "UTF-8") from None
    if not text.strip():
        raise ConfigError(f"cluster spec {str(path)!r} is empty")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text, object_pairs_hook=_unique_keys_dict)
        else:
            data = _yaml_load_unique(text)
    except _DuplicateKeyError as exc:
        raise ConfigError(f"cluster spec {str(path)!r}: {exc}") from None
    except (ValueError, Exception) as exc:  # yaml.YAMLError and json.JSONDecodeError
        msg = _yaml_problem(exc) or (str(exc).splitlines()[0] if str(exc)
                                      else type(exc).__name__)
        raise ConfigError(f"cluster spec {str(path)!r} is not valid YAML/JSON: {msg}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"cluster spec {str(path)!r} must be a mapping at top level")
    return data


def load_cluster(name_or_path: str | Path) -> ClusterSpec:
    """A shipped cluster by name ('h200-cpu') or a spec file by path.

    Raises:
        ConfigError: no such file or shipped name, or the spec is invalid.
    """
    path = Path(name_or_path)
    if path.is_file():
        return cluster_from_dict(read_spec_file(path), source=str(path))
    name = str(name_or_path)
    shipped = shipped_clusters()
    if name in shipped:
        p = CLUSTERS_DIR / f"{name}.yaml"
        return cluster_from_dict(read_spec_file(p), source=name)
    close = difflib.get_close_matches(name, shipped, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"unknown cluster {name!r}: not a file and not a shipped cluster{hint} "
                      f"(shipped: {', '.join(shipped)})")


# --- builders ---------------------------------------------------------------------------------


def _count(name: str, value: Any) -> int:
    """`value` as an int (a numpy integer too); ConfigError naming `name` unless it is > 0."""
    if not isinstance(value, bool):
        with contextlib.suppress(TypeError):
            value = operator.index(value)
    check_positive_int(f"gpu_cluster(): {name}", value)
    return value


def gpu_cluster(num_nodes: int, gpus_per_node: int, *, cost_device: str = "nvidia-h200",
                memory_bytes: float = 1.3e11, nvlink_bandwidth_bytes_per_s: float = 4.5e11,
                nvlink_energy_j_per_byte: float = 8e-12, nvlink_latency_s: float = 3e-6,
                network_bandwidth_bytes_per_s: float = 4e11,
                network_energy_j_per_byte: float = 1.5e-10, network_latency_s: float = 1e-5,
                name: str | None = None) -> ClusterSpec:
    """`num_nodes` x `gpus_per_node` GPUs: NVLink to each node's switch, the nodes joined by
    one network (directly for two nodes, through a 'spine' switch node for more).
    Link figures are estimates for H200 NVLink 4 and 8x400 Gb/s InfiniBand.

    Raises:
        ConfigError: a count that is not a positive integer (numpy integers are taken, bools
            and floats are not), or a figure that `cluster_from_dict` refuses; the message
            names the argument and the value given.
    """
    num_nodes = _count("num_nodes", num_nodes)
    gpus_per_node = _count("gpus_per_node", gpus_per_node)
    # checked here, as given: with > 2 nodes the spine links get half of each
    network_energy_j_per_byte = _number("gpu_cluster()", "network_energy_j_per_byte",
                                        network_energy_j_per_byte, positive=False)
    network_latency_s = _number("gpu_cluster()", "network_latency_s", network_latency_s,
                                positive=False)
    nodes = [{"name": f"node{n}"} for n in range(num_nodes)]
    devices, links = [], []
    for n in range(num_nodes):
        for g in range(gpus_per_node):
            dname = f"gpu{n * gpus_per_node + g}"
            devices.append({"name": dname, "kind": "gpu", "node": f"node{n}",
                            "cost_device": cost_device, "memory_bytes": memory_bytes})
            links.append({"a": dname, "b": f"node{n}",
                          "bandwidth_bytes_per_s": nvlink_bandwidth_bytes_per_s,
                          "energy_j_per_byte": nvlink_energy_j_per_byte,
                          "latency_s": nvlink_latency_s})
    if num_nodes == 2:
        links.append({"a": "node0", "b": "node1",
                      "bandwidth_bytes_per_s": network_bandwidth_bytes_per_s,
                      "energy_j_per_byte": network_energy_j_per_byte,
                      "latency_s": network_latency_s})
    elif num_nodes > 2:
        # A node without devices is a switch: every node reaches every other through it, and
        # each half of the path carries half the hop's energy and latency.
        nodes.append({"name": "spine"})
        for n in range(num_nodes):
            links.append({"a": f"node{n}", "b": "spine",
                          "bandwidth_bytes_per_s": network_bandwidth_bytes_per_s,
                          "energy_j_per_byte": network_energy_j_per_byte / 2,
                          "latency_s": network_latency_s / 2})
    return cluster_from_dict({
        "name": name or f"{num_nodes}x{gpus_per_node}-{cost_device}",
        "description": f"{num_nodes} nodes x {gpus_per_node} {cost_device} (generated; link "
                       "figures are estimates)",
        "nodes": nodes, "devices": devices, "links": links,
    }, source="gpu_cluster()")
