from __future__ import annotations

import copy
import json

import pytest

from wattmoe.errors import ConfigError
from wattmoe.placement import cluster_from_dict, gpu_cluster, load_cluster, shipped_clusters

GOOD = {
    "name": "box",
    "nodes": [{"name": "n0"}],
    "devices": [
        {"name": "gpu0", "kind": "gpu", "node": "n0", "cost_device": "nvidia-h200",
         "memory_bytes": "1.3e11", "power_budget_w": 500},
        {"name": "cpu0", "kind": "cpu", "node": "n0", "cost_device": "cpu-16core",
         "memory_bytes": 1e12, "always_on": True},
    ],
    "links": [{"a": "gpu0", "b": "cpu0", "bandwidth_bytes_per_s": 5.5e10,
               "energy_j_per_byte": 6e-11, "latency_s": 1e-5}],
    "token_home": ["gpu0"],
}


def test_shipped_clusters_load_by_name() -> None:
    assert set(shipped_clusters()) >= {"h200-cpu", "8xh200-2node", "laptop"}
    h = load_cluster("h200-cpu")
    assert h.device_names == ("gpu0", "cpu0")
    assert [d.kind for d in h.devices] == ["gpu", "cpu"]
    assert h.token_home == ("gpu0",)
    eight = load_cluster("8xh200-2node")
    assert len(eight.devices) == 8 and {d.node for d in eight.devices} == {"node0", "node1"}
    assert eight.token_home == eight.device_names  # default: every GPU
    laptop = load_cluster("laptop")
    assert laptop.device("gpu0").power_budget_w == 80


def test_valid_spec_and_round_trip(tmp_path) -> None:
    spec = cluster_from_dict(GOOD)
    assert spec.device("gpu0").memory_bytes == 130_000_000_000  # numeric string accepted
    again = cluster_from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    path = tmp_path / "box.json"
    path.write_text(json.dumps(GOOD))
    assert load_cluster(path) == spec
    ypath = tmp_path / "box.yaml"
    ypath.write_text("name: y\ndevices:\n  - {name: g, kind: gpu, cost_device: laptop-gpu, "
                     "memory_bytes: 8e9}\n")
    assert load_cluster(ypath).device("g").node == "node0"


def _bad(mutate) -> str:
    d = copy.deepcopy(GOOD)
    mutate(d)
    with pytest.raises(ConfigError) as exc:
        cluster_from_dict(d, source="box.yaml")
    return str(exc.value)


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda d: d["links"][0].update(b="gpu9"),
     "link gpu0-gpu9: field b names unknown device or node 'gpu9'"),
    (lambda d: d["devices"][0].update(kind="tpu"), "field kind must be one of"),
    (lambda d: d["devices"][0].update(memory_bytes=-1), "field memory_bytes must be a positive"),
    (lambda d: d["devices"][0].update(memory_bytes="lots"), "field memory_bytes"),
    (lambda d: d["devices"][1].pop("cost_device"), "missing field 'cost_device'"),
    (lambda d: d["devices"][0].update(memory_byte=1), "unknown field 'memory_byte'"),
    (lambda d: d["devices"][0].update(power_budget_w=0), "field power_budget_w"),
    (lambda d: d["devices"][1].update(name="gpu0"), "duplicate device name"),
    (lambda d: d["devices"][1].update(node="n7"), "unknown node 'n7'"),
    (lambda d: d.update(links=[]), "device 'cpu0' has no link path to token home 'gpu0'"),
    (lambda d: d.update(token_home=["tpu0"]), "token_home names unknown device 'tpu0'"),
    # was: silently read as [gpu0] (the tokens' spread over their homes changed unsaid)
    (lambda d: d.update(token_home=["gpu0", "cpu0", "gpu0"]),
     "field token_home lists device 'gpu0' more than once"),
    (lambda d: d["links"][0].update(bandwidth_bytes_per_s=0), "bandwidth_bytes_per_s"),
    (lambda d: d["links"][0].update(energy_j_per_byte=float("nan")), "energy_j_per_byte"),
    (lambda d: d["links"].append(dict(d["links"][0])), "duplicate link"),
    (lambda d: d.update(devices=[]), "at least one device"),
    # was: "field memory_bytes must be a positive number" without the value
    (lambda d: d["devices"][0].update(memory_bytes=True),
     "device 'gpu0': field memory_bytes must be a positive number, got True"),
    (lambda d: d["devices"][0].update(memory_bytes="lots"),
     "device 'gpu0': field memory_bytes must be a positive number, got 'lots'"),
    (lambda d: d["links"][0].update(latency_s=None),
     "link gpu0-cpu0: field latency_s must be a number >= 0, got None"),
])
def test_invalid_specs_name_the_field(mutate, expected: str) -> None:
    msg = _bad(mutate)
    assert expected in msg
    assert "box.yaml" in msg


def test_unknown_cluster_name_suggests() -> None:
    with pytest.raises(ConfigError, match="did you mean 'h200-cpu'"):
        load_cluster("h200-cpus")


def test_bad_file(tmp_path) -> None:
    p = tmp_path / "broken.yaml"
    p.write_text("devices: [\n")
    with pytest.raises(ConfigError, match="not valid YAML/JSON"):
        load_cluster(p)


def test_bad_yaml_says_what_and_where(tmp_path) -> None:
    # was: "is not valid YAML/JSON: while scanning a simple key", with no line and no problem
    p = tmp_path / "box.yaml"
    p.write_text("name: box\nnodes\n  - name: node0\n")
    with pytest.raises(ConfigError) as info:
        load_cluster(p)
    msg = str(info.value)
    assert "\n" not in msg
    assert "could not find expected ':'" in msg
    assert "line 2" in msg


@pytest.mark.parametrize(("name", "text"), [
    # was: the second memory_bytes silently won (a 1-byte GPU, every expert on the CPU)
    ("box.yaml", "name: box\ndevices:\n  - {name: gpu0, kind: gpu, cost_device: nvidia-h200,"
                 " memory_bytes: 1.3e11, memory_bytes: 1}\n"),
    ("box.yaml", "name: box\nname: other\ndevices: []\n"),
    ("box.json", '{"name": "box", "devices": [], "devices": []}'),
])
def test_duplicate_key_is_an_error(tmp_path, name, text) -> None:
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(ConfigError, match="duplicate key") as exc:
        load_cluster(p)
    assert name in str(exc.value)


def test_yaml_merge_key_may_override(tmp_path) -> None:
    # `<<: *gpu` then `name:` again is YAML's way to override, not a duplicate
    p = tmp_path / "merge.yaml"
    p.write_text("name: box\nnodes: [{name: n0}]\ndevices:\n"
                 "  - &gpu {name: gpu0, kind: gpu, node: n0, cost_device: nvidia-h200,"
                 " memory_bytes: 1.3e11}\n  - {<<: *gpu, name: gpu1}\nlinks:\n"
                 "  - {a: gpu0, b: n0, bandwidth_bytes_per_s: 5.5e10, energy_j_per_byte: 0,"
                 " latency_s: 0}\n  - {a: gpu1, b: n0, bandwidth_bytes_per_s: 5.5e10,"
                 " energy_j_per_byte: 0, latency_s: 0}\n")
    assert load_cluster(p).device_names == ("gpu0", "gpu1")


def test_empty_file_says_so(tmp_path) -> None:
    p = tmp_path / "empty.yaml"
    p.write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        load_cluster(p)


def test_gpu_cluster_builder() -> None:
    c = gpu_cluster(8, 8)
    assert len(c.devices) == 64
    assert "spine" in {n.name for n in c.nodes}
    assert len(c.token_home) == 64


@pytest.mark.parametrize(("args", "kwargs", "message"), [
    # was: TypeError 'float' object cannot be interpreted as an integer
    ((1.5, 2), {}, "gpu_cluster(): num_nodes must be a positive integer, got 1.5"),
    ((2, 1.5), {}, "gpu_cluster(): gpus_per_node must be a positive integer, got 1.5"),
    # was: TypeError '<' not supported between instances of 'str' and 'int'
    (("2", 2), {}, "gpu_cluster(): num_nodes must be a positive integer, got '2'"),
    # was: accepted as 1 node, and the cluster named 'Truex2-nvidia-h200'
    ((True, 2), {}, "gpu_cluster(): num_nodes must be a positive integer, got True"),
    ((0, 2), {}, "gpu_cluster(): num_nodes must be a positive integer, got 0"),
    ((2, -1), {}, "gpu_cluster(): gpus_per_node must be a positive integer, got -1"),
    # with > 2 nodes the spine links get half of each: was 'got -0.5' for -1
    ((3, 1), {"network_energy_j_per_byte": -1},
     "gpu_cluster(): field network_energy_j_per_byte must be a number >= 0, got -1"),
    ((3, 1), {"network_latency_s": "soon"},
     "gpu_cluster(): field network_latency_s must be a number >= 0, got 'soon'"),
])
def test_gpu_cluster_bad_arguments(args: tuple, kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        gpu_cluster(*args, **kwargs)
    assert str(err.value) == message


def test_gpu_cluster_takes_numpy_counts_and_numeric_strings() -> None:
    import numpy as np

    assert len(gpu_cluster(np.int64(2), np.int32(3)).devices) == 6
    # figures read as a spec file reads them (YAML 1.1 gives '1e-5' as text); with > 2 nodes
    # this was a TypeError from halving a string
    spine = {(lk.a, lk.b): lk for lk in gpu_cluster(3, 1, network_latency_s="1e-5").links}
    assert spine["node0", "spine"].latency_s == pytest.approx(5e-6)


def test_unknown_keys_of_mixed_types_are_named(tmp_path) -> None:
    # was: a TypeError traceback ('<' not supported between 'int' and 'str') from sorting
    # the unknown keys when a mapping had a non-string key (YAML reads `1:` as an int)
    d = copy.deepcopy(GOOD)
    d["devices"][0].update({1: "a", "foo": "b"})
    with pytest.raises(ConfigError, match=r"device.*unknown field 1\b"):
        cluster_from_dict(d, source="box.yaml")
    p = tmp_path / "keys.yaml"
    p.write_text("name: box\n2: x\nnull: y\ndevices:\n  - {name: gpu0, kind: gpu, "
                 "cost_device: nvidia-h200, memory_bytes: 1.3e11}\n")
    with pytest.raises(ConfigError, match=r"keys.yaml: unknown field 2\b"):
        load_cluster(p)


@pytest.mark.parametrize("name", ["latin1.yaml", "latin1.json"])
def test_spec_file_that_is_not_utf8_says_so(tmp_path, name) -> None:
    # was: a UnicodeDecodeError traceback (a spec saved as Latin-1, or UTF-16 by an editor)
    p = tmp_path / name
    p.write_bytes("name: caf\xe9\ndevices: []\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=rf"cluster spec '.*{name}' is not UTF-8 text: "
                                          r"byte 0xe9 at position 9"):
        load_cluster(p)


def test_spec_file_with_a_utf8_byte_order_mark_loads(tmp_path) -> None:
    # was (JSON): 'not valid YAML/JSON: Unexpected UTF-8 BOM' for a file Notepad saved
    p = tmp_path / "bom.json"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode())
    assert load_cluster(p) == cluster_from_dict(GOOD)


def test_an_integer_beyond_float_range_is_one_error(tmp_path) -> None:
    # was: OverflowError 'int too large to convert to float' from math.isfinite (YAML and
    # JSON read an integer of any length)
    p = tmp_path / "huge.yaml"
    p.write_text("devices:\n  - {name: gpu0, kind: gpu, cost_device: nvidia-h200, "
                 f"memory_bytes: 1{'0' * 400}}}\n")
    with pytest.raises(ConfigError, match=r"huge.yaml: device 'gpu0': field memory_bytes must "
                                          r"be a finite number, got an integer of 401 digits"):
        load_cluster(p)
    with pytest.raises(ConfigError, match="field network_latency_s must be a finite number"):
        gpu_cluster(2, 1, network_latency_s=10**400)
