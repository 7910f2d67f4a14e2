"""SecAgg+ over simulated phones (issue #5): same aggregate as FedAvg, survives dropouts,
the server only sees masked vectors. Each simulation is a few clients on Ray (~7-15 s)."""

import doctest

import numpy as np
import pytest

from device_sim.fl import errors as fl_errors
from device_sim.fl import secagg
from device_sim.fl.secagg import (
    FederationError,
    fedavg,
    make_secagg_apps,
    run_secagg_simulation,
    secagg_tolerance,
    synthetic_fit_fn,
)

SCALE = 0.1  # synthetic updates lie in [-SCALE, SCALE]


def _init():
    rng = np.random.default_rng(0)
    return [rng.normal(size=(3, 4)), rng.normal(size=(6,))]


def _expected(fit, partition_ids, arrays):
    """Exact FedAvg of the listed clients' local arrays, and their num_examples."""
    outs = [fit(pid, [a.copy() for a in arrays], {}) for pid in partition_ids]
    return fedavg([o[0] for o in outs], [o[1] for o in outs]), [o[1] for o in outs]


def _max_err(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("module", [secagg, fl_errors])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.timeout(120)
def test_secagg_equals_plain_fedavg_weighted():
    n, max_examples = 5, 3
    fit = synthetic_fit_fn(scale=SCALE, max_examples=max_examples)
    runs = {}
    for secure in (True, False):
        server, client = make_secagg_apps(fit, num_rounds=2, initial_arrays=_init(), min_clients=n,
                                          secure=secure, max_weight=max_examples)
        runs[secure] = run_secagg_simulation(server, client, num_supernodes=n)
    for secure, results in runs.items():
        assert [r.server_round for r in results] == [1, 2]
        prev = _init()
        for r in results:
            assert r.partition_ids == tuple(range(n)) and r.num_failures == 0 and r.secure is secure
            want, weights = _expected(fit, range(n), prev)
            assert len(set(weights)) > 1  # really weighted
            tol = secagg_tolerance(weights, max_abs_update=SCALE, max_weight=max_examples) if secure else 1e-12
            assert _max_err(r.arrays, want) <= tol
            assert [a.shape for a in r.arrays] == [a.shape for a in prev]
            prev = r.arrays
    # Round 1 starts from the same arrays in both runs: direct comparison.
    tol = secagg_tolerance([1 + p % max_examples for p in range(n)], max_abs_update=SCALE, max_weight=max_examples)
    assert 0 < _max_err(runs[True][0].arrays, runs[False][0].arrays) <= tol < 1e-5


@pytest.mark.timeout(120)
def test_secagg_round_completes_with_20_percent_dropped():
    n = 10
    fit = synthetic_fit_fn(scale=SCALE)
    server, client = make_secagg_apps(fit, num_rounds=1, initial_arrays=_init(), min_clients=n,
                                      num_shares=1.0, reconstruction_threshold=0.5, drop_fraction=0.2)
    [r] = run_secagg_simulation(server, client, num_supernodes=n)
    assert len(r.dropped_node_ids) == 2 and r.num_failures == 2 and len(r.partition_ids) == 8
    want, weights = _expected(fit, r.partition_ids, _init())
    assert _max_err(r.arrays, want) <= secagg_tolerance(weights, max_abs_update=SCALE)
    everyone, _ = _expected(fit, range(n), _init())
    assert _max_err(r.arrays, everyone) > 1e-3  # the dropped clients are really left out


@pytest.mark.timeout(120)
def test_secagg_halts_loudly_when_too_many_drop():
    server, client = make_secagg_apps(synthetic_fit_fn(), num_rounds=1, initial_arrays=_init(), min_clients=4,
                                      num_shares=1.0, reconstruction_threshold=0.75, drop_fraction=0.5)
    with pytest.raises(FederationError, match="produced no aggregate"):
        run_secagg_simulation(server, client, num_supernodes=4)


@pytest.mark.timeout(120)
def test_server_never_sees_an_unmasked_update():
    from flwr.common import bytes_to_ndarray
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

    n, q = 4, secagg.DEFAULT_QUANTIZATION_RANGE
    fit = synthetic_fit_fn(scale=SCALE)
    replies = []
    server, client = make_secagg_apps(fit, num_rounds=1, initial_arrays=_init(), min_clients=n,
                                      on_reply=replies.append)
    [r] = run_secagg_simulation(server, client, num_supernodes=n)
    assert r.partition_ids == tuple(range(n))
    plaintext = [np.concatenate([(o - g).ravel() for o, g in zip(fit(p, _init(), {})[0], _init())]) for p in range(n)]

    masked = []
    for msg in replies:
        assert not msg.has_error()
        assert all(len(rec) == 0 for rec in msg.content.array_records.values())  # no arrays travel in the clear
        cfg = msg.content.config_records[RECORD_KEY_CONFIGS]
        if Key.MASKED_PARAMETERS in cfg:
            masked.append(np.concatenate([bytes_to_ndarray(b).ravel() for b in cfg[Key.MASKED_PARAMETERS]]))
    assert len(masked) == n  # one masked vector per client, and nothing else carrying values
    for vec in masked:
        values = vec[1:]  # vec[0] is the masked weight factor
        # Unmasked, every value would be a quantization level in [0, Q]; masked ones are
        # uniform over [0, 2**32): only ~Q / 2**32 = 0.1% of them can fall below Q.
        assert (values > q).mean() > 0.9
        for p in plaintext:
            assert not np.allclose(values, (p + 1.0) * q / 2.0, atol=2.0)  # not the plaintext levels
