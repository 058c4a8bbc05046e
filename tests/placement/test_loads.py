from __future__ import annotations

import json

import numpy as np
import pytest

from wattmoe.errors import ConfigError
from wattmoe.placement import (
    PlacementError,
    loads_from_layers,
    make_loads,
    read_loads,
    synthetic_loads,
)


def test_make_loads_defaults() -> None:
    loads = make_loads([[4, 2, 2, 0], [1, 3, 2, 2]], top_k=2)
    assert loads.tokens.shape == (2, 4)
    assert loads.tokens_per_batch == pytest.approx(4.0)  # 8 assignments / top-2
    with pytest.raises(ValueError):
        loads.tokens[0, 0] = 1  # read-only


@pytest.mark.parametrize(("tokens", "expected"), [
    ([[1, float("nan"), 2]], "layer 0, expert 1 has nan tokens"),
    ([[1, 2], [3, -2]], "layer 1, expert 1 has -2 tokens"),
    ([[1, float("inf")]], "non-finite"),
    ([[0, 0, 0]], "no tokens at all"),
    ([[[1]]], "must be a [layers, experts] matrix"),
    ("abc", "numeric"),
])
def test_bad_loads_are_one_clear_error(tokens, expected: str) -> None:
    with pytest.raises(PlacementError, match=None) as exc:
        make_loads(tokens)
    assert expected in str(exc.value)


def test_inferred_tokens_per_batch_must_account_for_every_count() -> None:
    # without a tokens_per_batch, it is inferred as sum / top_k (no dropped assignments);
    # an expert with more tokens than that cannot be (was: 50,001.5 tokens per batch, fewer
    # than the hottest expert's 100,000, priced without a word; a new user's trial)
    with pytest.raises(PlacementError) as exc:
        make_loads([[100000, 1, 1, 1]], top_k=2)
    assert ("loads are invalid: layer 0, expert 0 has 100000 tokens, more than the tokens its "
            "layer's counts imply, sum / top_k = 100003 / 2 = 50001.5 (a token picks an expert "
            "at most once); give the batch's tokens") in str(exc.value)
    assert "--tokens" in str(exc.value)
    # given, the batch's tokens account for it (dropped assignments)
    assert make_loads([[100000, 1, 1, 1]], top_k=2, tokens_per_batch=100000).tokens_per_batch \
        == 100000
    # a count equal to the inferred tokens is possible (every token picked that expert), and
    # layers may differ (the batch's tokens: their mean)
    assert make_loads([[4, 2, 2, 0], [1, 1, 0, 0]], top_k=2).tokens_per_batch == 2.5


def test_synthetic_loads_are_seeded_and_plausible() -> None:
    a = synthetic_loads(4, 64, 8, 4096, "zipf:1.2", seed=3)
    b = synthetic_loads(4, 64, 8, 4096, "zipf:1.2", seed=3)
    c = synthetic_loads(4, 64, 8, 4096, "zipf:1.2", seed=4)
    assert np.array_equal(a.tokens, b.tokens)
    assert not np.array_equal(a.tokens, c.tokens)
    assert a.tokens.max() <= 4096  # a token picks an expert at most once
    # each layer's counts sum to about tokens x top_k
    np.testing.assert_allclose(a.tokens.sum(axis=1), 4096 * 8, rtol=0.02)
    # skewed: the hottest expert gets far more than the mean
    assert a.tokens.max(axis=1).min() > 4 * a.tokens.mean()
    u = synthetic_loads(2, 64, 8, 4096, "uniform", seed=0)
    assert u.tokens.max() < 2 * u.tokens.mean()


def test_negative_seed_is_one_config_error() -> None:
    # numpy's SeedSequence raises a bare ValueError for it (a traceback in `wattmoe place`)
    with pytest.raises(ConfigError, match="seed must be an integer >= 0, got -1"):
        synthetic_loads(1, 8, 2, 10, "uniform", seed=-1)


def test_bad_skew() -> None:
    with pytest.raises(ConfigError, match="zipf:S"):
        synthetic_loads(1, 8, 2, 10, "pareto:2")


def test_read_loads_formats(tmp_path) -> None:
    m = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    np.save(tmp_path / "l.npy", m)
    np.savetxt(tmp_path / "l.csv", m, delimiter=",", header="layers x experts")
    (tmp_path / "l.json").write_text(json.dumps(m.tolist()))
    for name in ("l.npy", "l.csv", "l.json"):
        loads = read_loads(tmp_path / name, top_k=1)
        np.testing.assert_array_equal(loads.tokens, m)
        assert loads.source == name
    (tmp_path / "nan.csv").write_text("1,nan,3\n")
    with pytest.raises(PlacementError, match="layer 0, expert 1 has nan"):
        read_loads(tmp_path / "nan.csv", top_k=1)
    with pytest.raises(ConfigError, match="cannot read loads file"):
        read_loads(tmp_path / "missing.npy", top_k=1)
    # an unknown suffix says so, not "not a numeric matrix" (ConfigError is a ValueError)
    (tmp_path / "l.yaml").write_text("[[1]]")
    want = r"^loads file '[^']*l\.yaml': use \.npy, \.csv \(or \.txt, read as CSV\) or \.json$"
    with pytest.raises(ConfigError, match=want):
        read_loads(tmp_path / "l.yaml", top_k=1)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="is not a numeric matrix"):
        read_loads(tmp_path / "bad.json", top_k=1)


def test_loads_files_a_new_user_tried(tmp_path) -> None:
    import warnings

    # a new user's trial (session 16). Complex counts: the imaginary part was dropped (with
    # numpy's ComplexWarning); strings in a .npy were read as numbers
    np.save(tmp_path / "c.npy", np.array([[1 + 2j, 3, 4]]))
    np.save(tmp_path / "s.npy", np.array([["1", "2", "3"]]))
    for name, dtype in (("c.npy", "complex128"), ("s.npy", "<U1")):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(ConfigError, match=rf"^loads file '[^']*{name}' holds "
                               rf"{dtype} values; counts must be real numbers$"):
                read_loads(tmp_path / name, top_k=1)
    # a text file named .npy: was numpy's "pickled data ... allow_pickle" message
    (tmp_path / "t.npy").write_text("1,2,3\n")
    with pytest.raises(ConfigError, match=r"^loads file '[^']*t\.npy' is not a \.npy file "
                       r"\(no NumPy header; write it with numpy\.save, or name a "
                       r"comma-separated file \.csv\)$"):
        read_loads(tmp_path / "t.npy", top_k=1)
    # a CSV saved by Excel starts with a UTF-8 byte-order mark: was "could not convert
    # string '\ufeff1'"; and .txt is read as CSV (documented)
    m = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    for name in ("excel.csv", "excel.txt"):
        (tmp_path / name).write_bytes("\ufeff1,2,3\r\n3,2,1\r\n".encode())
        np.testing.assert_array_equal(read_loads(tmp_path / name, top_k=1).tokens, m)


def test_empty_loads_file_is_one_error_and_no_numpy_warning(tmp_path) -> None:
    import warnings

    # was: numpy's "loadtxt: input contained no data" UserWarning on stderr, then
    # "loads must be a [layers, experts] matrix, got shape (0, 1)"
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "comments.csv").write_text("# layers x experts\n")
    np.save(tmp_path / "empty.npy", np.zeros((0, 8)))
    for name in ("empty.csv", "comments.csv", "empty.npy"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(ConfigError, match=f"loads file '[^']*{name}' holds no counts"):
                read_loads(tmp_path / name, top_k=1)


def test_loads_from_measured_layer_counts() -> None:
    torch = pytest.importorskip("torch")
    from wattmoe.moe import SimpleMoELayer, get_preset

    cfg = get_preset("tiny")
    layers = [SimpleMoELayer(cfg, seed=i) for i in range(2)]
    x = torch.randn(64, cfg.hidden_size, generator=torch.Generator().manual_seed(0))
    for layer in layers:
        layer(x)
    loads = loads_from_layers(layers)
    assert loads.tokens.shape == (2, cfg.num_experts)
    np.testing.assert_array_equal(loads.tokens[1], layers[1].tokens_per_expert.numpy())
    assert loads.tokens_per_batch == pytest.approx(64)


@pytest.mark.parametrize(("rows", "message"), [
    # was: "loads must be a numeric [layers, experts] matrix, got list"
    ([[1, 2, 3], [1, 2, 3], [1, 2]], "rows differ in length: row 2 has 2 counts, row 0 has 3"),
    ([[1, 2, 3], 4], "rows differ in length: row 1 is 4, not a list of counts"),
    # was: accepted, true read as 1 and false as 0
    ([[1, 2, 3], [1, True, 3]], "layer 1, expert 1 is true; counts must be numbers"),
    ([1, False, 3], "layer 0, expert 1 is false; counts must be numbers"),
    # was: accepted, "3" read as 3
    ([[1, 2, "3"]], 'layer 0, expert 2 is "3"; counts must be numbers'),
    ([[1, None, 3]], "layer 0, expert 1 is null; counts must be numbers"),
    ({"layer0": [1, 2]}, "must be a list of rows (a [layers, experts] matrix), got an object"),
])
def test_bad_json_loads_name_the_row(tmp_path, rows, message) -> None:
    path = tmp_path / "l.json"
    path.write_text(json.dumps(rows))
    with pytest.raises(ConfigError) as exc:
        read_loads(path, top_k=1)
    assert str(exc.value) == f"loads file {str(path)!r}: {message}"


def test_bool_npy_loads_are_refused(tmp_path) -> None:
    np.save(tmp_path / "b.npy", np.array([[True, False, True]]))  # was: read as 1, 0, 1
    with pytest.raises(ConfigError, match=r"b\.npy' holds true/false values \(a bool array\); "
                       "counts must be numbers"):
        read_loads(tmp_path / "b.npy", top_k=1)



def test_tokens_per_batch_of_the_wrong_kind_is_one_error() -> None:
    # was: a TypeError from math.isfinite for a string, and "no tokens at all (every count
    # is 0)" for a negative tokens_per_batch with counts that are not 0
    with pytest.raises(PlacementError, match=r"tokens_per_batch must be a number > 0 or None, "
                                             r"got '3'"):
        make_loads([[1, 2]], top_k=1, tokens_per_batch="3")
    with pytest.raises(PlacementError, match="tokens_per_batch must be a finite number > 0, "
                                             "got -3"):
        make_loads([[1, 2]], top_k=1, tokens_per_batch=-3)
    with pytest.raises(PlacementError, match="no tokens at all"):
        make_loads([[0, 0]], top_k=1)


def test_loads_from_layers_counted_over_several_steps() -> None:
    torch = pytest.importorskip("torch")
    from wattmoe.moe import SimpleMoELayer, get_preset

    cfg = get_preset("tiny")
    layer = SimpleMoELayer(cfg, seed=0)
    x = torch.randn(64, cfg.hidden_size, generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        layer(x)
    loads = loads_from_layers([layer], tokens_per_batch=64, steps=3)
    np.testing.assert_allclose(loads.tokens[0], layer.tokens_per_expert.numpy() / 3)
    assert loads.tokens.sum() == pytest.approx(64 * cfg.top_k)
    assert loads.source == "SimpleMoELayer counts / 3 steps"
    for bad in (0, 1.5, True):
        with pytest.raises(PlacementError, match=f"steps must be a positive integer, got {bad}"):
            loads_from_layers([layer], steps=bad)


@pytest.mark.parametrize(("layers", "experts", "top_k", "tokens", "skew"), [
    (8, 64, 8, 4096, "zipf:1.2"), (8, 8, 2, 10, "uniform"), (8, 12, 2, 400, "zipf:3"),
    (4, 8, 8, 5, "zipf:1.2"), (4, 16, 4, 1, "zipf:1.0"), (2, 256, 8, 8192, "zipf:1.2"),
    (2, 256, 8, 10**7, "zipf:1.2"),  # 2.56e9 (token, expert) pairs: past numpy's sampler
])
def test_synthetic_loads_route_every_token_to_exactly_top_k(
        layers: int, experts: int, top_k: int, tokens: int, skew: str) -> None:
    # was: independent Binomial(tokens, pi_e) counts, whose sum missed tokens x top_k by
    # sampling noise (over it about half the time: more work than the batch's tokens can do)
    for seed in range(5):
        loads = synthetic_loads(layers, experts, top_k, tokens, skew, seed=seed)
        np.testing.assert_array_equal(loads.tokens.sum(axis=1), tokens * top_k)
        assert loads.tokens.min() >= 0 and loads.tokens.max() <= tokens
        assert np.array_equal(loads.tokens, np.round(loads.tokens))


def test_synthetic_loads_keep_the_expected_counts() -> None:
    # uniform: every expert expects tokens x top_k / experts
    u = synthetic_loads(400, 16, 4, 1000, "uniform", seed=0).tokens
    np.testing.assert_allclose(u.mean(axis=0), 250, rtol=0.01)
    # zipf:3 on 12 experts, top-2: the most popular expert is capped at pi = 1 (every token
    # picks it), and keeps exactly `tokens` (no surplus is taken from it)
    z = synthetic_loads(200, 12, 2, 400, "zipf:3", seed=1).tokens
    np.testing.assert_array_equal(z.max(axis=1), 400)
    from wattmoe.placement.loads import _inclusion_probabilities

    pi = _inclusion_probabilities(np.arange(1, 13, dtype=float) ** -3.0, 2)
    second = np.sort(z, axis=1)[:, -2]  # the second most popular expert, mostly
    assert second.mean() == pytest.approx(400 * np.sort(pi)[-2], rel=0.05)


def test_counts_beyond_the_given_tokens_are_refused() -> None:
    # was: accepted, and energy per batch / tokens_per_batch priced more work per token than
    # the batch's tokens can make (the demo placed 10 steps' counts as one step's)
    with pytest.raises(PlacementError, match=r"loads are invalid: layer 1 has 40 assignments, "
                       r"more than tokens_per_batch x top_k = 16 x 2 = 32 \(1 layer over\); "
                       r"counts added up over several batches\? divide them by the number of "
                       r"batches \(loads_from_layers: steps=\)"):
        make_loads([[16, 16], [20, 20]], top_k=2, tokens_per_batch=16)
    with pytest.raises(PlacementError, match=r"layer 0, expert 0 has 12 tokens, more than "
                       r"tokens_per_batch = 10 \(a token picks an expert at most once\)"):
        make_loads([[12, 4, 4]], top_k=2, tokens_per_batch=10)
    # up to tokens x top_k is fine (fewer: dropped assignments), float counts within rounding
    assert make_loads([[16, 16], [10, 12]], top_k=2, tokens_per_batch=16).tokens_per_batch == 16
    twelfths = np.full((1, 12), 10 / 12)  # sums to 10.000000000000002
    assert twelfths.sum() > 10
    assert make_loads(twelfths, top_k=1, tokens_per_batch=10).tokens.sum() == pytest.approx(10)
    # without tokens_per_batch there is nothing to contradict: the mean over layers, as before
    assert make_loads([[4, 0], [2, 2]], top_k=1).tokens_per_batch == 4


def test_loads_from_layers_over_several_steps_need_steps() -> None:
    torch = pytest.importorskip("torch")
    from wattmoe.moe import SimpleMoELayer, get_preset

    layer = SimpleMoELayer(get_preset("tiny"), seed=0)
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    layer(x)
    layer(x)
    with pytest.raises(PlacementError, match="has 32 assignments, more than tokens_per_batch x "
                                             "top_k = 8 x 2 = 16"):
        loads_from_layers([layer], tokens_per_batch=8)
    assert loads_from_layers([layer], tokens_per_batch=8, steps=2).tokens.sum() == 16


@pytest.mark.parametrize("skew", ["zipf:400", "zipf:1000", "zipf:1e308"])
def test_steep_zipf_gives_the_top_k_experts_every_token(skew) -> None:
    # was: ValueError 'p < 0, p > 1 or p contains NaNs' from numpy's binomial: the weights of
    # the experts after the most popular underflowed to 0 and the water-filling divided 0 by 0
    loads = synthetic_loads(3, 64, 8, 100, skew, seed=0)
    for row in loads.tokens:
        assert sorted(row)[-8:] == [100.0] * 8 and row.sum() == 800


def test_an_integer_count_beyond_float_range_is_one_error(tmp_path) -> None:
    # was: OverflowError 'int too large to convert to float' (a traceback from the CLI)
    path = tmp_path / "l.json"
    path.write_text("[[1, 1" + "0" * 400 + ", 3]]")
    with pytest.raises(ConfigError) as exc:
        read_loads(path, top_k=1)
    assert str(exc.value) == (f"loads file {str(path)!r}: layer 0, expert 1 is an integer of "
                              "401 digits, too large for a count; counts must be finite")
    with pytest.raises(PlacementError, match=r"loads must be finite numbers: a count is too "
                                             r"large for a float64 \(int too large"):
        make_loads([[1, 10**400, 3]], top_k=1)


def test_ragged_csv_error_gives_no_numpy_advice(tmp_path) -> None:
    # was: "... changed from 8 to 3 at row 2; use `usecols` to select a subset and avoid this
    # error": numpy's advice to its own caller, which a `wattmoe place --loads` user cannot take
    (tmp_path / "ragged.csv").write_text("1,2,3,4,5,6,7,8\n1,2,3\n")
    with pytest.raises(ConfigError) as info:
        read_loads(tmp_path / "ragged.csv", top_k=1)
    msg = str(info.value)
    assert "usecols" not in msg
    assert "changed from 8 to 3 at row 2" in msg and "one row per layer" in msg
