"""Checks and attacks under SecAgg+ and in the clear (issue "Trust", item 6).

Bounds (module docstring of device_sim.fl.secagg): with per-client bound B = max_update_norm, every
applied round moves the model by at most B + s (s: quantization slack, ~1e-6 here) and the honest
clients' mean has norm <= B, so the global update stays within 2B + s of the honest aggregate; a
skipped round leaves the model unchanged. Each test is one Ray simulation of 4-5 clients (~7-15 s).
"""

import numpy as np
import pytest

from device_sim.fl.secagg import (
    FederationError,
    aggregate_slack,
    fedavg,
    make_secagg_apps,
    never_unmask_mod,
    run_secagg_simulation,
    secagg_tolerance,
    synthetic_fit_fn,
)

SCALE = 0.1  # synthetic updates lie in [-SCALE, SCALE]: norm <= 0.1 * sqrt(18) = 0.42
B = 0.5  # max_update_norm
N = 4


def _init():
    rng = np.random.default_rng(0)
    return [rng.normal(size=(3, 4)), rng.normal(size=(6,))]


def _deltas(fit, pids, arrays):
    return [[o - a for o, a in zip(fit(p, [a.copy() for a in arrays], {})[0], arrays)] for p in pids]


def _norm(arrays):
    return float(np.sqrt(sum(float(np.sum(np.square(a))) for a in arrays)))


def _sub(a, b):
    return [x - y for x, y in zip(a, b, strict=True)]


ATTACKS = [  # one attack per round, by partition 0, after its own client-side checks
    {"kind": "nan", "partitions": [0], "factor": None, "rounds": [1]},
    {"kind": "scale", "partitions": [0], "factor": 1e6, "rounds": [2]},
    {"kind": "examples", "partitions": [0], "factor": 1e9, "rounds": [3]},
]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("secure", [False, True], ids=["plain-fedavg", "secagg+"])
def test_attacks_that_bypass_the_client_checks_are_bounded(secure):
    fit = synthetic_fit_fn(scale=SCALE)
    server, client = make_secagg_apps(fit, num_rounds=3, initial_arrays=_init(), min_clients=N, secure=secure,
                                      max_update_norm=B, attacks=ATTACKS)
    results = run_secagg_simulation(server, client, num_supernodes=N, allow_skipped=True)
    assert [r.server_round for r in results] == [1, 2, 3]
    slack = aggregate_slack([1] * N, 18, max_update_norm=B)
    prev = _init()
    for r, attack in zip(results, ATTACKS, strict=True):
        honest = fedavg(_deltas(fit, range(1, N), prev), [1] * (N - 1))  # the honest clients' aggregate
        assert _norm(honest) <= B
        update = _sub(r.arrays, prev)
        assert all(np.isfinite(u).all() for u in update)
        assert _norm(update) <= B + slack and _norm(_sub(update, honest)) <= 2 * B + slack  # the stated bound
        kind = attack["kind"]
        if not secure:
            assert not r.skipped
            if kind in ("nan", "scale"):  # the reply is refused: exactly the honest aggregate
                assert r.rejected == (0,) and _norm(_sub(update, honest)) < 1e-9
            else:  # 1e9 examples clipped to max_weight: an equal vote, its (honest) update averaged in
                everyone = fedavg(_deltas(fit, range(N), prev), [1] * N)
                assert r.rejected == () and _norm(_sub(update, everyone)) < 1e-9
        else:  # the server sees only the sum: the aggregate check skips the round, the model stays
            assert r.skipped and _norm(update) == 0.0, r
            assert {"nan": "norm", "scale": "norm", "examples": "num_examples 1000000000"}[kind] in r.reason
        prev = r.arrays


@pytest.mark.timeout(180)
@pytest.mark.parametrize("secure", [False, True], ids=["plain-fedavg", "secagg+"])
def test_client_side_checks_refuse_nan_and_clip_norm_and_examples(secure):
    """A client whose training goes wrong (NaN, x1e6, 1e9 examples) but runs edge-gr's client code:
    NaN is refused (it drops out of the round), the others are clipped to B and max_weight before upload."""
    honest_fit = synthetic_fit_fn(scale=SCALE)

    def fit(pid, arrays, config):
        out, n, m = honest_fit(pid, arrays, config)
        if pid == 0:
            out = [np.full_like(o, np.nan) for o in out]
        elif pid == 1:
            out = [a + (o - a) * 1e6 for o, a in zip(out, arrays)]
        elif pid == 2:
            n = 10**9
        return out, n, m

    n = 5
    server, client = make_secagg_apps(fit, num_rounds=1, initial_arrays=_init(), min_clients=n, secure=secure,
                                      max_update_norm=B)
    [r] = run_secagg_simulation(server, client, num_supernodes=n)
    assert r.partition_ids == (1, 2, 3, 4) and r.num_failures == 1 and not r.skipped
    d = _deltas(honest_fit, range(1, n), _init())
    d[0] = [x * 1e6 for x in d[0]]
    d[0] = [x * (B / _norm(d[0])) for x in d[0]]  # clipped to norm B
    want = fedavg(d, [1] * 4)  # equal weights: 1e9 clipped to max_weight 1
    tol = secagg_tolerance([1] * 4, max_abs_update=B) if secure else 1e-12
    assert max(float(np.abs(u - w).max()) for u, w in zip(_sub(r.arrays, _init()), want)) <= tol


def _never_unmask_round(how: str, **kwargs):
    """2 of 4 clients never answer stage 3 (unmask): each key needs 3 shares, so the masks cannot be
    removed. Returns the run's FederationError message and the reported round."""
    seen = []
    server, client = make_secagg_apps(
        synthetic_fit_fn(scale=SCALE), num_rounds=1, initial_arrays=_init(), min_clients=N, num_shares=1.0,
        reconstruction_threshold=0.75, on_aggregate=seen.append, client_mods=[never_unmask_mod([0, 1], how=how, **kwargs.pop("mod", {}))],
        **kwargs.pop("apps", {}))
    with pytest.raises(FederationError) as info:
        run_secagg_simulation(server, client, num_supernodes=N, **kwargs)
    [r] = seen
    return str(info.value), r


def _check_failed_cleanly(message, r, answered=(2,)):
    import re

    assert "produced no aggregate" in message and "unmask stage" in message and "unchanged" in message
    m = re.search(r"(\d) of 4 sampled clients answered, 3 shares are needed", message)
    assert m and int(m.group(1)) in answered and "Traceback" not in message
    assert r.skipped and r.server_round == 1 and r.partition_ids == ()
    assert all(np.array_equal(a, b) for a, b in zip(r.arrays, _init(), strict=True))  # the model is unchanged


@pytest.mark.timeout(180)
def test_clients_that_fail_in_the_unmask_stage_fail_the_round_cleanly():
    """The two clients' mods raise in stage 3: they send no key shares (an error reply, no content)."""
    _check_failed_cleanly(*_never_unmask_round("raise"))


@pytest.mark.slow  # ~60 s: the stage timeout must cover Ray's start-up in stage 0 on a loaded machine
@pytest.mark.timeout(300)
def test_clients_that_hang_in_the_unmask_stage_fail_the_round_cleanly():
    """The two clients hang in stage 3 past the server's stage timeout: nothing arrives in time. (An
    honest client's unmask message may also wait behind a hung Ray worker, hence 0-2 answers.)"""
    _check_failed_cleanly(*_never_unmask_round("hang", mod={"hang_s": 45.0}, apps={"timeout": 30.0}, num_cpus=4),
                          answered=(0, 1, 2))


@pytest.mark.timeout(180)
def test_client_level_dp_noise_on_the_unmasked_mean():
    """SecAgg+ + client-side clipping + server noise (issue #17 item 5): the aggregate is the masked FedAvg plus
    Gaussian noise of std z * B / m (Flower's compute_stdv); without a clipping bound DP is refused."""
    init = [np.zeros(4000)]
    fit = synthetic_fit_fn(scale=SCALE)
    z, m = 2.0, 5
    plain_s, plain_c = make_secagg_apps(fit, num_rounds=1, initial_arrays=init, min_clients=m, max_update_norm=50.0)
    [clean] = run_secagg_simulation(plain_s, plain_c, num_supernodes=m)
    noisy_s, noisy_c = make_secagg_apps(fit, num_rounds=1, initial_arrays=init, min_clients=m, max_update_norm=50.0,
                                        noise_multiplier=z)
    [noisy] = run_secagg_simulation(noisy_s, noisy_c, num_supernodes=m)
    assert noisy.secure and noisy.noise_std == pytest.approx(z * 50.0 / m) and clean.noise_std == 0.0
    diff = noisy.arrays[0] - clean.arrays[0]
    assert abs(diff.mean()) < 5 * noisy.noise_std / np.sqrt(diff.size)
    assert diff.std() == pytest.approx(noisy.noise_std, rel=0.1)
    with pytest.raises(FederationError, match="clipping bound"):
        make_secagg_apps(fit, num_rounds=1, initial_arrays=init, min_clients=m, noise_multiplier=z)
