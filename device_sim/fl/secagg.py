"""Secure aggregation (SecAgg+) for federated personalization (issue #5).

One entry, :func:`make_secagg_apps`, turns a local-training function into a Flower
``(ServerApp, ClientApp)`` pair that averages the clients' updates with FedAvg,
either under SecAgg+ (``secure=True``: the server only ever holds masked integer
vectors and their sum) or in the clear (``secure=False``, the same apps without the
protocol, for comparison). :func:`run_secagg_simulation` runs a pair on the Ray
simulation backend and returns one :class:`RoundResult` per round.

SecAgg+ exists only in Flower 1.42's *legacy* API, so this module uses it: server
``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))`` over a ``LegacyContext``
holding a ``flwr.server.strategy.FedAvg``; client ``ClientApp(client_fn,
mods=[secaggplus_mod])``.

What the server sees
--------------------
Under SecAgg+ each client uploads ``[q_i, quantize(w_i * u_i)] + masks mod 2**32``
(``w_i = num_examples / max_weight``, ``u_i`` its update): pairwise masks cancel in
the sum, private masks are removed with Shamir shares, dropped clients' pairwise masks
are rebuilt from their neighbours' shares. ``num_examples`` and the client's metrics
travel **in the clear** (Flower puts them in the FitRes); only the arrays are masked.

Weighting (``max_weight``)
--------------------------
A client scales its update by ``r_i = round(num_examples / max_weight * Q) / Q``
*before* clipping to ``[-clipping_range, clipping_range]`` and quantizing to ``Q =
quantization_range`` levels; the server divides the unmasked sum by ``sum(r_i)``. So
FedAvg weighting by ``num_examples`` is exact up to rounding ``r_i`` to ``1/Q``, but:
``num_examples`` must not exceed ``max_weight`` (checked here), and ``max_weight``
should be close to the largest ``num_examples``: the quantization error is divided by
``sum(r_i)``, so Flower's default ``max_weight=1000`` with clients reporting 1 example
loses a factor 1000 in precision.

Tolerance (see :func:`secagg_tolerance`)
-----------------------------------------
With ``n`` surviving clients, ``C = clipping_range``, ``P = max |u_i|`` and
``b_i = r_i`` as above, every element of the SecAgg+ aggregate differs from the exact
``num_examples``-weighted FedAvg of the survivors by less than::

    (2C/Q * n            # stochastic rounding: < 1 level (2C/Q) per client
     + n/(2Q) * 2P)      # weights rounded to 1/Q: |b_i - w_i| <= 1/(2Q)
    / sum(b_i)

plus float rounding. Unweighted (all ``num_examples == max_weight``) that is ``2C/Q``:
4.8e-7 with the defaults ``C = 1``, ``Q = 2**22``. No overflow needs ``n * Q <
modulus_range`` (checked each round): at most 1023 clients per round with the defaults.

Checks and attacks (issue "Trust", item 6)
------------------------------------------
Under SecAgg+ the server cannot look at one update, so the defences are split:

* **client side, before masking** (:func:`_check_client_update`): a non-finite update is
  refused (the client fails the round); with ``max_update_norm = B`` an update longer than
  ``B`` (L2, of the delta) is scaled down to ``B``; ``num_examples`` is clipped to
  ``max_weight``; a weighted element outside ``[-C, C]`` is refused. This bounds honest
  but buggy clients, not a client that runs other code.
* **server side, on the unmasked aggregate** (:func:`check_aggregate`): the mean update
  must be finite, every ``num_examples`` claimed in the clear must be ``<= max_weight``,
  and (with ``B``) ``||mean|| <= B + s``: a weighted mean of updates of norm ``<= B`` has
  norm ``<= B``, and ``s = sqrt(d) * secagg_tolerance(...)`` is the quantization slack
  over the ``d`` elements. A failing aggregate skips the round: the global arrays stay
  as they were and the :class:`RoundResult` says why (``skipped``, ``reason``).
* **in the clear** (``secure=False``) every reply is checked before aggregation
  (:func:`device_sim.fl.robust.check_update`: finite, ``||u_i|| <= B``; a failing reply
  is left out, listed in ``RoundResult.rejected``) and its ``num_examples`` is clipped to
  ``max_weight``; then the same aggregate check.

So whatever a malicious client sends, an aggregated round moves the model by at most
``B + s`` and the honest clients' mean has norm ``<= B``: the global update is within
``2B + s`` of the honest aggregate, and within ``B`` when the round is skipped.
``attacks=`` (dicts of :func:`device_sim.fl.attacks.parse_attack`) corrupts the chosen
partitions' plaintext update *after* the client's checks and before masking: a client
that bypasses its own checks (tested in ``tests/test_fl_trust_secagg.py``).

A SecAgg+ round that cannot finish (too few clients answer a stage, e.g. the unmasking
stage, to rebuild the masks) is also reported as skipped with the stage, and the model
is unchanged; :func:`run_secagg_simulation` raises :class:`FederationError` naming the
rounds and reasons (or returns them with ``allow_skipped=True``).

Updates, not models
-------------------
With ``send_deltas=True`` (default) a client sends ``local - global`` and the server
adds the averaged delta to the global arrays, so ``clipping_range`` bounds the
*update*, which is small (LoRA steps) and keeps the quantization step small. The
result is the FedAvg of the clients' local arrays either way.

Dropouts
--------
SecAgg+ treats a node as dropped when its reply to a stage is an error or does not
arrive within ``timeout``. ``drop_fraction`` makes a seeded share of the sampled
clients raise :class:`SimulatedDropout` right after local training, i.e. after key
sharing (stage 1) and before uploading the masked vector (stage 2): the round
completes as long as every sampled node keeps ``reconstruction_threshold`` live
neighbours, and the aggregate is the FedAvg of the survivors.

Example (synthetic updates, 4 simulated phones; ~7 s on Ray, 2 CPU cores)::

    >>> import numpy as np
    >>> init = [np.zeros((2, 3)), np.zeros(4)]
    >>> fit = synthetic_fit_fn()              # partition-seeded random updates
    >>> server_app, client_app = make_secagg_apps(
    ...     fit, num_rounds=1, initial_arrays=init, min_clients=4)
    >>> [r] = run_secagg_simulation(server_app, client_app, num_supernodes=4)  # doctest: +SKIP
    >>> r.partition_ids, r.arrays[1].shape                                    # doctest: +SKIP
    ((0, 1, 2, 3), (4,))
"""

from __future__ import annotations

import os

# Flower reads this at import time; without it every run posts telemetry events
# (there is no internet here, so each exit would wait for a timeout).
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import logging  # noqa: E402
import random  # noqa: E402
from collections.abc import Callable, Iterable, Sequence  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from device_sim.fl.errors import FederationError  # noqa: E402

__all__ = [
    "FitFn",
    "RoundResult",
    "SimulatedDropout",
    "FederationError",
    "make_secagg_apps",
    "run_secagg_simulation",
    "fedavg",
    "secagg_tolerance",
    "check_secagg_ranges",
    "choose_dropouts",
    "synthetic_fit_fn",
    "check_aggregate",
    "aggregate_slack",
    "never_unmask_mod",
    "DEFAULT_CLIPPING_RANGE",
    "DEFAULT_QUANTIZATION_RANGE",
    "DEFAULT_MODULUS_RANGE",
]

#: ``fit_fn(partition_id, arrays, config) -> (arrays, num_examples, metrics)``: one
#: client's local training, starting from the global ``arrays`` of this round.
FitFn = Callable[[int, list[np.ndarray], dict[str, Any]], tuple[list[np.ndarray], int, dict[str, Any]]]

DEFAULT_CLIPPING_RANGE = 1.0  # bound on |num_examples / max_weight * update|
DEFAULT_QUANTIZATION_RANGE = 2**22  # levels per element (Flower's default)
DEFAULT_MODULUS_RANGE = 2**32  # mask range (Flower's default and maximum)

# Keys this layer adds to Flower's plaintext FitIns config / FitRes metrics.
_DROP_KEY = "edge_gr_simulate_dropout"
_PID_KEY = "edge_gr_partition_id"

_log = logging.getLogger(__name__)


class SimulatedDropout(RuntimeError):
    """Raised inside a client chosen by ``drop_fraction``: the phone died mid-round."""


@dataclass(frozen=True)
class RoundResult:
    """What the server holds after one aggregated round."""

    server_round: int  # 1-based
    arrays: list[np.ndarray]  # the new global arrays (dtype of ``initial_arrays``)
    partition_ids: tuple[int, ...]  # sorted partition ids of the clients that contributed
    num_failures: int  # sampled clients that did not contribute (dropouts included)
    secure: bool  # True if aggregated under SecAgg+
    dropped_node_ids: tuple[int, ...] = field(default=())  # nodes told to drop (drop_fraction)
    skipped: bool = False  # True: no aggregate was applied, ``arrays`` are the round's start arrays
    reason: str = ""  # why the round was skipped
    rejected: tuple[int, ...] = field(default=())  # partitions whose reply was refused (secure=False)
    noise_std: float = 0.0  # client-level DP: std of the Gaussian noise added to the mean update (0 = no DP)


# ----------------------------------------------------------------------------- math


def fedavg(updates: Sequence[Sequence[np.ndarray]], num_examples: Sequence[int]) -> list[np.ndarray]:
    """Reference FedAvg: the ``num_examples``-weighted mean of ``updates`` (float64).

    >>> fedavg([[np.array([0.0, 2.0])], [np.array([4.0, 2.0])]], [1, 3])
    [array([3., 2.])]
    """
    if not updates or len(updates) != len(num_examples):
        raise FederationError(
            f"fedavg got {len(updates)} updates and {len(num_examples)} weights",
            hint="pass one num_examples per update, at least one update",
        )
    w = np.asarray(num_examples, dtype=np.float64)
    if (w <= 0).any():
        raise FederationError("fedavg got a non-positive num_examples", hint="weights must be > 0")
    return [
        sum(wi * np.asarray(u[k], dtype=np.float64) for wi, u in zip(w, updates)) / w.sum()
        for k in range(len(updates[0]))
    ]


def secagg_tolerance(
    num_examples: Sequence[int],
    *,
    max_abs_update: float,
    clipping_range: float = DEFAULT_CLIPPING_RANGE,
    quantization_range: int = DEFAULT_QUANTIZATION_RANGE,
    max_weight: float = 1.0,
) -> float:
    """Worst-case per-element |SecAgg+ aggregate - exact FedAvg| over these clients.

    ``(2C/Q * n + n/(2Q) * 2 * max_abs_update) / sum(b_i)`` with ``b_i =
    round(num_examples_i / max_weight * Q) / Q`` (module docstring). Assumes no value
    was clipped, i.e. ``num_examples_i / max_weight * |u_i| <= clipping_range``.

    >>> secagg_tolerance([1, 1, 1], max_abs_update=0.5)  # unweighted: 2C/Q + weights exact
    4.76...e-07
    >>> secagg_tolerance([10, 40], max_abs_update=0.5, max_weight=40) < 1e-6
    True
    """
    n, q = len(num_examples), quantization_range
    b = sum(round(w / max_weight * q) / q for w in num_examples)
    weights_exact = all(round(w / max_weight * q) == w / max_weight * q for w in num_examples)
    rounding = 2.0 * clipping_range / q * n
    weighting = 0.0 if weights_exact else n / (2.0 * q) * 2.0 * max_abs_update
    return (rounding + weighting) / b


def check_secagg_ranges(
    num_clients: int,
    *,
    clipping_range: float = DEFAULT_CLIPPING_RANGE,
    quantization_range: int = DEFAULT_QUANTIZATION_RANGE,
    modulus_range: int = DEFAULT_MODULUS_RANGE,
) -> None:
    """Raise :class:`FederationError` if ``num_clients`` quantized vectors could overflow
    the mask modulus (their sum must stay below ``modulus_range``).

    >>> check_secagg_ranges(1023)
    >>> check_secagg_ranges(1024)
    Traceback (most recent call last):
    ...
    device_sim.fl.errors.FederationError: SecAgg+ sum of 1024 clients x 4194304 levels overflows modulus_range 4294967296. To fix: sample at most 1023 clients per round or lower quantization_range
    """
    if clipping_range <= 0:
        raise FederationError(f"clipping_range must be > 0, got {clipping_range}", hint="pass e.g. 1.0")
    if num_clients * quantization_range >= modulus_range:
        raise FederationError(
            f"SecAgg+ sum of {num_clients} clients x {quantization_range} levels overflows "
            f"modulus_range {modulus_range}",
            hint=f"sample at most {(modulus_range - 1) // quantization_range} clients per round "
            "or lower quantization_range",
        )


def choose_dropouts(node_ids: Iterable[int], fraction: float, *, seed: int, server_round: int) -> set[int]:
    """The seeded ``round(fraction * n)`` of the sampled ``node_ids`` that drop this round.

    >>> sorted(choose_dropouts(range(10), 0.2, seed=0, server_round=1))
    [3, 9]
    >>> choose_dropouts(range(10), 0.0, seed=0, server_round=1)
    set()
    """
    if not 0.0 <= fraction < 1.0:
        raise FederationError(f"drop_fraction must be in [0, 1), got {fraction}", hint="pass e.g. 0.2")
    ids = sorted(node_ids)
    return set(random.Random(f"{seed}:{server_round}").sample(ids, round(fraction * len(ids))))


def synthetic_fit_fn(scale: float = 0.1, max_examples: int = 1) -> FitFn:
    """A deterministic stand-in for local training: ``arrays + U(-scale, scale)`` noise
    seeded by (partition id, arrays), ``num_examples = 1 + partition_id % max_examples``.

    >>> fit = synthetic_fit_fn(max_examples=3)
    >>> out, n, _ = fit(4, [np.zeros(2)], {})
    >>> n, bool(np.all(np.abs(out[0]) <= 0.1)), np.array_equal(out[0], fit(4, [np.zeros(2)], {})[0][0])
    (2, True, True)
    """

    def fit(partition_id: int, arrays: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        digest = int(sum(float(np.abs(a).sum()) for a in arrays) * 1e6) % 2**31
        rng = np.random.default_rng([partition_id, digest])
        out = [a + rng.uniform(-scale, scale, a.shape).astype(a.dtype) for a in arrays]
        return out, 1 + partition_id % max_examples, {}

    return fit


def aggregate_slack(
    num_examples: Sequence[int],
    num_elements: int,
    *,
    max_update_norm: float,
    clipping_range: float = DEFAULT_CLIPPING_RANGE,
    quantization_range: int = DEFAULT_QUANTIZATION_RANGE,
    max_weight: float = 1.0,
) -> float:
    """``s``: how much longer (L2) than ``max_update_norm`` a SecAgg+ mean of honest updates
    can come out: ``sqrt(num_elements) * secagg_tolerance(...)`` with ``max_abs_update =
    max_update_norm`` (an element is never larger than the norm).

    >>> f"{aggregate_slack([1, 1, 1, 1], 18, max_update_norm=0.5):.3g}"
    '2.02e-06'
    """
    per_element = secagg_tolerance([min(n, max_weight) for n in num_examples], max_abs_update=max_update_norm,
                                   clipping_range=clipping_range, quantization_range=quantization_range,
                                   max_weight=max_weight)
    return float(np.sqrt(num_elements) * per_element)


def check_aggregate(
    mean_update: Sequence[np.ndarray],
    num_examples: Sequence[int],
    *,
    secure: bool,
    max_update_norm: float | None,
    max_weight: float,
    clipping_range: float = DEFAULT_CLIPPING_RANGE,
    quantization_range: int = DEFAULT_QUANTIZATION_RANGE,
) -> str | None:
    """Why the (unmasked) mean update must not be applied, or None (a pure function).

    Refuses a non-finite mean; under SecAgg+ a ``num_examples`` claimed in the clear above
    ``max_weight`` (the client's masked weight factor then overflowed); with
    ``max_update_norm = B``, ``||mean|| > B + s`` (:func:`aggregate_slack`; in the clear
    ``s`` is float rounding only).

    >>> check_aggregate([np.full(4, 0.1)], [1, 1], secure=True, max_update_norm=0.5, max_weight=1)
    >>> check_aggregate([np.full(4, 0.3)], [1, 1], secure=True, max_update_norm=0.5, max_weight=1)
    'aggregate update norm 0.6 > bound 0.500001 (max_update_norm 0.5 + quantization slack 9.5e-07)'
    >>> check_aggregate([np.array([np.nan])], [1], secure=False, max_update_norm=None, max_weight=1)
    'non-finite aggregate update'
    >>> check_aggregate([np.zeros(2)], [1, 10**9], secure=True, max_update_norm=None, max_weight=1)
    'a client claimed num_examples 1000000000 > max_weight 1 (its masked weight overflows the sum)'
    """
    arrays = [np.asarray(a, dtype=np.float64) for a in mean_update]
    if not all(np.isfinite(a).all() for a in arrays):
        return "non-finite aggregate update"
    if secure and num_examples and max(num_examples) > max_weight:
        return (f"a client claimed num_examples {max(num_examples)} > max_weight {max_weight:g} "
                "(its masked weight overflows the sum)")
    if max_update_norm is None:
        return None
    norm = float(np.sqrt(sum(float(np.dot(a.ravel(), a.ravel())) for a in arrays)))
    d = sum(a.size for a in arrays)
    slack = (aggregate_slack(num_examples, d, max_update_norm=max_update_norm, clipping_range=clipping_range,
                             quantization_range=quantization_range, max_weight=max_weight)
             if secure else 1e-9 * max_update_norm)
    if norm > max_update_norm + slack:
        return (f"aggregate update norm {norm:.4g} > bound {max_update_norm + slack:.6g} "
                f"(max_update_norm {max_update_norm:g} + quantization slack {slack:.2g})")
    return None


# ----------------------------------------------------------------------------- apps


def make_secagg_apps(
    fit_fn: FitFn,
    *,
    num_rounds: int,
    initial_arrays: Sequence[np.ndarray],
    min_clients: int,
    fraction_fit: float = 1.0,
    secure: bool = True,
    num_shares: int | float = 1.0,
    reconstruction_threshold: int | float = 0.5,
    clipping_range: float = DEFAULT_CLIPPING_RANGE,
    quantization_range: int = DEFAULT_QUANTIZATION_RANGE,
    modulus_range: int = DEFAULT_MODULUS_RANGE,
    max_weight: float = 1.0,
    timeout: float | None = None,
    send_deltas: bool = True,
    drop_fraction: float = 0.0,
    drop_seed: int = 0,
    max_update_norm: float | None = None,
    attacks: Sequence[dict] = (),
    client_mods: Sequence[Callable[..., Any]] = (),
    noise_multiplier: float | None = None,
    on_aggregate: Callable[[RoundResult], None] | None = None,
    on_reply: Callable[[Any], None] | None = None,
) -> tuple[Any, Any]:
    """Build a ``(ServerApp, ClientApp)`` running ``num_rounds`` of FedAvg over ``fit_fn``.

    Args:
        fit_fn: ``fit_fn(partition_id, arrays, config) -> (arrays, num_examples, metrics)``,
            the client's local training; ``partition_id`` is the SuperNode's
            ``node_config["partition-id"]``. Metrics must be Flower scalars.
        num_rounds: server rounds.
        initial_arrays: the global arrays of round 1 (their dtypes are kept).
        min_clients: clients that must be connected before a round starts, and the
            least sampled per round.
        fraction_fit: share of connected clients sampled per round.
        secure: SecAgg+ (True) or the same FedAvg in the clear (False).
        num_shares: Shamir shares per client key; an int > 2 or a fraction of the
            sampled clients (1.0: every sampled client is everyone's neighbour, which
            costs O(n^2) key shares; for rounds of 100+ phones pass an odd int, e.g. 15).
        reconstruction_threshold: shares needed to rebuild a key (int, or fraction of
            ``num_shares``). Every node must keep this many live neighbours, so with
            ``num_shares=1.0`` up to ``1 - reconstruction_threshold`` may drop.
        clipping_range: ``C``; each client's ``num_examples / max_weight * update`` must
            lie in ``[-C, C]`` (a client that would be clipped raises instead).
        quantization_range: ``Q`` levels per element; the error is ``~2C/Q``.
        modulus_range: mask range, a power of two ``> n * Q``.
        max_weight: the largest ``num_examples`` a client may report (module docstring).
        timeout: seconds the server waits per SecAgg+ stage, or per round without
            SecAgg+ (``None``: for every reply; a node that misses it counts as dropped).
        send_deltas: clients send ``local - global``; the server adds the mean back.
        drop_fraction: seeded share of sampled clients that raise
            :class:`SimulatedDropout` after local training (after key sharing).
        drop_seed: seed of :func:`choose_dropouts`.
        max_update_norm: ``B``, the L2 bound on one client's update (the delta with
            ``send_deltas``): clients clip to it before masking, the server refuses a mean
            longer than ``B + s`` and, in the clear, any reply longer than ``B``
            (module docstring). ``None``: finiteness and weights are checked only.
        attacks: robustness evaluation: :func:`~device_sim.fl.attacks.parse_attack`
            dicts (``kind``, ``partitions``, ``factor``, optional ``rounds``); those
            partitions corrupt their update after their own checks, before masking.
        noise_multiplier: client-level DP with SecAgg+ (Flower's client-side fixed clipping scheme): every client clips
            its update to ``max_update_norm`` before masking and weighs the same (``num_examples = max_weight``);
            the server adds Gaussian noise of std ``z * B / m`` (Flower's ``compute_stdv``) to the unmasked mean of
            the ``m`` aggregated updates, after the aggregate check. Needs ``max_update_norm``.
        client_mods: Flower mods wrapped around the whole client (they see the SecAgg+
            protocol messages, e.g. :func:`never_unmask_mod`).
        on_aggregate: called on the server with each round's :class:`RoundResult`
            (skipped rounds included).
        on_reply: called on the server with every reply ``flwr.app.Message`` it
            receives (to inspect what the server actually sees).

    Returns:
        ``(server_app, client_app)``, a ``flwr.serverapp.ServerApp`` and a
        ``flwr.clientapp.ClientApp`` (``flwr.client.ClientApp``); usable with
        :func:`run_secagg_simulation` or as ``module:attribute`` components of a
        Flower app for ``flwr run``.

    >>> s, c = make_secagg_apps(synthetic_fit_fn(), num_rounds=1,
    ...                         initial_arrays=[np.zeros(3)], min_clients=3)
    >>> type(s).__name__, type(c).__name__
    ('ServerApp', 'ClientApp')
    """
    from flwr.client import ClientApp, NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server import LegacyContext, ServerApp, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    init = [np.array(a, copy=True) for a in initial_arrays]
    if num_rounds < 1 or min_clients < 2:
        raise FederationError(
            f"need num_rounds >= 1 and min_clients >= 2 (got {num_rounds}, {min_clients})",
            hint="SecAgg+ needs at least 2 sampled clients per round",
        )
    if not init:
        raise FederationError("initial_arrays is empty", hint="pass the global model's arrays")
    if max_weight <= 0:
        raise FederationError(f"max_weight must be > 0, got {max_weight}", hint="pass the largest num_examples")
    check_secagg_ranges(min_clients, clipping_range=clipping_range, quantization_range=quantization_range,
                        modulus_range=modulus_range)
    if max_update_norm is not None and not max_update_norm > 0:
        raise FederationError(f"max_update_norm must be > 0, got {max_update_norm}", hint="pass an L2 bound, e.g. 1.0, or None")
    if noise_multiplier is not None and (max_update_norm is None or not noise_multiplier >= 0):
        raise FederationError(f"client-level DP needs a noise multiplier >= 0 and a clipping bound (got z={noise_multiplier}, "
                              f"max_update_norm={max_update_norm})", hint="pass max_update_norm=C, the L2 bound each client clips to")
    from device_sim.fl.attacks import KINDS

    for a in attacks:
        if a.get("kind") not in KINDS:
            raise FederationError(f"unknown attack {a!r}", hint=f"use device_sim.fl.attacks.parse_attack ({', '.join(KINDS)})")
    choose_dropouts([], drop_fraction, seed=drop_seed, server_round=1)  # validates drop_fraction
    dtypes = [a.dtype for a in init]

    class _Strategy(FedAvg):
        """FedAvg of deltas (or arrays) that marks dropouts and reports each round."""

        def configure_fit(self, server_round, parameters, client_manager):  # type: ignore[no-untyped-def]
            pairs = super().configure_fit(server_round, parameters, client_manager)
            self._global = parameters_to_ndarrays(parameters)
            self._round = server_round
            if secure:
                check_secagg_ranges(len(pairs), clipping_range=clipping_range,
                                    quantization_range=quantization_range, modulus_range=modulus_range)
            drop = choose_dropouts([p.node_id for p, _ in pairs], drop_fraction, seed=drop_seed,
                                   server_round=server_round)
            self._dropped = tuple(sorted(drop))
            self._num_sampled = len(pairs)
            # FedAvg hands every client the same FitIns object: copy before marking.
            return [
                (p, FitIns(ins.parameters, {**ins.config, _DROP_KEY: True}) if p.node_id in drop else ins)
                for p, ins in pairs
            ]

        def _report(self, result: RoundResult) -> None:
            for sink in sinks:
                sink.append(result)
            if on_aggregate is not None:
                on_aggregate(result)

        def skip(self, server_round: int, reason: str, results: Sequence[Any] = (), rejected: tuple[int, ...] = ()) -> None:
            """Report round ``server_round`` as skipped: the global arrays stay as they were."""
            from flwr.common.logger import log

            msg = f"round {server_round} skipped, the global model is unchanged: {reason}"
            log(logging.WARNING, "edge-gr: %s", msg)
            _log.warning(msg)
            self._report(RoundResult(
                server_round=server_round, arrays=[g.astype(t) for g, t in zip(self._global, dtypes)],
                partition_ids=tuple(sorted(int(r.metrics[_PID_KEY]) for _, r in results)),
                num_failures=self._num_sampled - len(results), secure=secure, dropped_node_ids=self._dropped,
                skipped=True, reason=reason, rejected=rejected))

        def _screen(self, results):  # type: ignore[no-untyped-def]
            """In the clear: leave out replies failing check_update, clip num_examples."""
            from device_sim.fl.robust import ReplyGuard, check_update

            guard = ReplyGuard(max_update_norm=max_update_norm)
            kept, rejected = [], []
            for proxy, res in results:
                arrays = parameters_to_ndarrays(res.parameters)
                if len(arrays) != len(self._global):
                    why: str | None = f"{len(arrays)} arrays, the global model has {len(self._global)}"
                else:
                    ref = [np.zeros_like(g) for g in self._global] if send_deltas else self._global
                    why = check_update({str(k): a for k, a in enumerate(arrays)},
                                       {str(k): g for k, g in enumerate(ref)}, guard)
                pid = int(res.metrics.get(_PID_KEY, -1))
                if why:
                    _log.warning("round reply of partition %d rejected: %s", pid, why)
                    rejected.append(pid)
                    continue
                res.num_examples = int(min(res.num_examples, max_weight))
                kept.append((proxy, res))
            return kept, tuple(sorted(rejected))

        def aggregate_fit(self, server_round, results, failures):  # type: ignore[no-untyped-def]
            rejected: tuple[int, ...] = ()
            if not secure:
                results, rejected = self._screen(results)
            if not results:
                self.skip(server_round, "no usable client update" + (f" (rejected: {list(rejected)})" if rejected else ""),
                          rejected=rejected)
                return None, {}
            claimed = [int(r.num_examples) for _, r in results]
            params, metrics = super().aggregate_fit(server_round, results, failures)
            if params is None:
                self.skip(server_round, "the strategy produced no aggregate", results, rejected)
                return None, {}
            mean = parameters_to_ndarrays(params)
            mean_update = mean if send_deltas else [m - g for m, g in zip(mean, self._global)]
            why = check_aggregate(mean_update, claimed, secure=secure, max_update_norm=max_update_norm,
                                  max_weight=max_weight, clipping_range=clipping_range,
                                  quantization_range=quantization_range)
            if why:
                self.skip(server_round, why, results, rejected)
                return None, {}
            std = 0.0
            if noise_multiplier is not None:  # after the check: the noise is not the clients' and may exceed B
                from flwr.supercore.differential_privacy import add_gaussian_noise_inplace, compute_stdv

                std = compute_stdv(noise_multiplier, max_update_norm, len(results))
                mean = [np.asarray(m, dtype=np.float64) for m in mean]
                if send_deltas:
                    add_gaussian_noise_inplace(mean, std)
                else:
                    noise = [np.zeros_like(m) for m in mean]
                    add_gaussian_noise_inplace(noise, std)
                    mean = [m + z for m, z in zip(mean, noise)]
            if send_deltas:
                new = [(g.astype(np.float64) + m).astype(t) for g, m, t in zip(self._global, mean, dtypes)]
            else:
                new = [m.astype(t) for m, t in zip(mean, dtypes)]
            result = RoundResult(
                server_round=server_round,
                arrays=[a.copy() for a in new],
                partition_ids=tuple(sorted(int(r.metrics[_PID_KEY]) for _, r in results)),
                # Not len(failures): SecAggPlusWorkflow (flwr 1.42) appends each stage-2
                # error twice to its failure list.
                num_failures=self._num_sampled - len(results),
                secure=secure,
                dropped_node_ids=self._dropped,
                rejected=rejected,
                noise_std=std,
            )
            self._report(result)
            return ndarrays_to_parameters(new), metrics

    server_app = ServerApp()
    sinks: list[list[RoundResult]] = []  # run_secagg_simulation's collectors
    server_app._edge_gr_results = sinks  # type: ignore[attr-defined]
    server_app._edge_gr_num_rounds = num_rounds  # type: ignore[attr-defined]

    @server_app.main()
    def _main(grid, context):  # type: ignore[no-untyped-def]
        strategy = _Strategy(
            fraction_fit=fraction_fit,
            fraction_evaluate=0.0,
            min_fit_clients=min_clients,
            min_evaluate_clients=min_clients,
            min_available_clients=min_clients,
            initial_parameters=ndarrays_to_parameters(init),
            fit_metrics_aggregation_fn=lambda _: {},
        )
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=num_rounds, round_timeout=timeout),
                               strategy=strategy)
        fit_workflow = None
        if secure:
            fit_workflow = _workflow_class()(
                strategy,
                num_shares=num_shares,
                reconstruction_threshold=reconstruction_threshold,
                max_weight=max_weight,
                clipping_range=clipping_range,
                quantization_range=quantization_range,
                modulus_range=modulus_range,
                timeout=timeout,
            )
        DefaultWorkflow(fit_workflow=fit_workflow)(_ReplyTap(grid, on_reply) if on_reply else grid, legacy)

    class _Client(NumPyClient):
        def __init__(self, partition_id: int):
            self.partition_id = partition_id

        def fit(self, parameters, config):  # type: ignore[no-untyped-def]
            arrays, n, metrics = fit_fn(self.partition_id, [a.copy() for a in parameters], dict(config))
            if noise_multiplier is not None:
                n = max_weight  # DP: every client weighs the same (the noise is calibrated to one clipped update in m)
            if config.get(_DROP_KEY):
                raise SimulatedDropout(f"partition {self.partition_id} dropped after local training")
            out = [np.asarray(a) - g for a, g in zip(arrays, parameters)] if send_deltas else list(arrays)
            if secure or max_update_norm is not None:
                delta = out if send_deltas else [np.asarray(o) - g for o, g in zip(out, parameters)]
                delta, n = _check_client_update(delta, n, max_weight=max_weight, clipping_range=clipping_range,
                                                max_update_norm=max_update_norm, secure=secure)
                out = delta if send_deltas else [g + d for g, d in zip(parameters, delta)]
            return out, int(n), {**metrics, _PID_KEY: self.partition_id}

    def client_fn(context):  # type: ignore[no-untyped-def]
        try:
            pid = int(context.node_config["partition-id"])
        except KeyError as e:
            raise FederationError(
                "the SuperNode has no node_config 'partition-id'",
                hint='start it with --node-config "partition-id=I num-partitions=N"',
            ) from e
        return _Client(pid).to_client()

    inner = [_attack_mod(list(attacks), send_deltas)] if attacks else []
    client_app = ClientApp(client_fn=client_fn, mods=[*client_mods, *([secaggplus_mod] if secure else []), *inner])
    return server_app, client_app


def _workflow_class() -> type:
    """``SecAggPlusWorkflow`` that reports a halted stage as a skipped round."""
    from flwr.server.workflow import SecAggPlusWorkflow

    class ReportingSecAggPlus(SecAggPlusWorkflow):
        def __init__(self, strategy: Any, **kwargs: Any):
            super().__init__(**kwargs)
            self._edge_gr_strategy = strategy

        def _watch(self, stage: str, ok: bool, state: Any) -> bool:
            if not ok:
                live, sampled = len(state.active_node_ids), len(state.sampled_node_ids)
                self._edge_gr_strategy.skip(
                    self._edge_gr_strategy._round,
                    f"SecAgg+ halted in the {stage} stage: {live} of {sampled} sampled clients answered, "
                    f"{state.threshold} shares are needed to rebuild each client's masks")
            return ok

        def setup_stage(self, grid, context, state):  # type: ignore[no-untyped-def]
            return self._watch("setup", super().setup_stage(grid, context, state), state)

        def share_keys_stage(self, grid, context, state):  # type: ignore[no-untyped-def]
            return self._watch("share-keys", super().share_keys_stage(grid, context, state), state)

        def collect_masked_vectors_stage(self, grid, context, state):  # type: ignore[no-untyped-def]
            return self._watch("collect-masked-vectors", super().collect_masked_vectors_stage(grid, context, state), state)

        def unmask_stage(self, grid, context, state):  # type: ignore[no-untyped-def]
            return self._watch("unmask", super().unmask_stage(grid, context, state), state)

    return ReportingSecAggPlus


def _attack_mod(attacks: list[dict], send_deltas: bool) -> Callable[..., Any]:
    """A legacy-API client mod between SecAgg+ and the client: the attacking partitions
    corrupt their plaintext ``FitRes`` after the client's own checks, before masking."""

    def mod(msg, context, call_next):  # type: ignore[no-untyped-def]
        from flwr.app import Array

        reply = call_next(msg, context)
        pid = int(context.node_config.get("partition-id", -1))
        try:
            rnd = int(msg.metadata.group_id)
        except ValueError:
            rnd = -1
        c = reply.content
        if reply.has_error() or "fitres.parameters" not in c.array_records:
            return reply  # not a fit reply (a protocol stage, or the client failed)
        for a in attacks:
            if pid not in set(a["partitions"]) or ("rounds" in a and rnd not in set(a["rounds"])):
                continue
            if a["kind"] == "examples":
                c.metric_records["fitres.num_examples"]["num_examples"] = int(a.get("factor") or 1e9)
                continue
            rec = c.array_records["fitres.parameters"]
            sent = list(msg.content.array_records["fitins.parameters"].values())
            for k, (key, arr) in enumerate(list(rec.items())):
                v = arr.numpy()
                if a["kind"] == "nan":
                    bad = np.full_like(v, np.nan)
                elif send_deltas:
                    bad = v * float(a.get("factor") or 1e6)
                else:
                    g = sent[k].numpy()
                    bad = g + (v - g) * float(a.get("factor") or 1e6)
                rec[key] = Array(np.ascontiguousarray(bad, dtype=v.dtype))
        return reply

    return mod


def never_unmask_mod(partitions: Iterable[int], *, how: str = "raise", hang_s: float = 30.0) -> Callable[..., Any]:
    """A client mod for dropout tests: the listed partitions never answer SecAgg+'s unmask
    stage (``how="raise"``: the client fails there; ``"hang"``: it sleeps ``hang_s``
    seconds, past the server's stage timeout, then fails).

    >>> callable(never_unmask_mod([0], how="hang"))
    True
    """
    victims = {int(p) for p in partitions}
    if how not in ("raise", "hang"):
        raise FederationError(f"never_unmask_mod how={how!r}", hint="use 'raise' or 'hang'")

    def mod(msg, context, call_next):  # type: ignore[no-untyped-def]
        import time

        from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

        cfg = msg.content.config_records.get(RECORD_KEY_CONFIGS)
        if (cfg is not None and cfg.get(Key.STAGE) == Stage.UNMASK
                and int(context.node_config.get("partition-id", -1)) in victims):
            if how == "hang":
                time.sleep(hang_s)
            raise SimulatedDropout(f"partition {context.node_config['partition-id']} never answers the unmask stage")
        return call_next(msg, context)

    return mod


def _check_client_update(update: list[np.ndarray], num_examples: int, *, max_weight: float, clipping_range: float,
                         max_update_norm: float | None = None, secure: bool = True) -> tuple[list[np.ndarray], int]:
    """The update and weight a client may upload: refuse non-finite values, clip the L2 norm to
    ``max_update_norm`` and ``num_examples`` to ``max_weight``; under SecAgg+ refuse what
    quantization would clip silently.

    Under SecAgg+ the server sees only the masked sum, so this client-side check before masking is the
    only place a NaN can be caught: quantization maps NaN to -2^31 and the sum stays finite but wrong.

    >>> out, n = _check_client_update([np.array([3.0, 4.0])], 10**9, max_weight=2, clipping_range=8.0, max_update_norm=1.0)
    >>> np.round(out[0], 6).tolist(), n
    ([0.6, 0.8], 2)
    """
    for k, a in enumerate(update):
        if not np.isfinite(np.asarray(a, dtype=np.float64)).all():
            raise FederationError(f"update array {k} has non-finite values; SecAgg+ would quantize them into a wrong finite sum",
                                  hint="fix the local training (learning rate, loss) or drop this round's update")
    if max_update_norm is not None:
        norm = float(np.sqrt(sum(float(np.dot(np.ravel(a), np.ravel(a))) for a in update)))
        if norm > max_update_norm:
            _log.info("update norm %.4g clipped to max_update_norm %g before upload", norm, max_update_norm)
            update = [np.asarray(a) * (max_update_norm / norm) for a in update]
    if num_examples > max_weight:
        _log.warning("num_examples %s clipped to max_weight %g before upload", num_examples, max_weight)
        num_examples = int(max_weight)
    if not secure:
        return update, num_examples
    peak = max((float(np.abs(a).max()) for a in update if a.size), default=0.0) * num_examples / max_weight
    if peak > clipping_range:
        raise FederationError(
            f"weighted update reaches {peak:.4g}, outside SecAgg+ clipping_range {clipping_range} "
            "(it would be clipped silently)",
            hint="raise clipping_range, send deltas, or clip the update (DP clipping) before upload",
        )
    return update, num_examples


class _ReplyTap:
    """A Grid proxy that shows every reply message to ``callback`` (server-side view)."""

    def __init__(self, grid: Any, callback: Callable[[Any], None]):
        self._grid, self._callback = grid, callback

    def send_and_receive(self, messages: Iterable[Any], *, timeout: float | None = None) -> list[Any]:
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        for msg in replies:
            self._callback(msg)
        return replies

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


# ----------------------------------------------------------------------------- simulation


def run_secagg_simulation(
    server_app: Any,
    client_app: Any,
    *,
    num_supernodes: int,
    num_rounds: int | None = None,
    num_cpus: int = 1,
    client_num_cpus: float = 1.0,
    verbose: bool = False,
    allow_skipped: bool = False,
) -> list[RoundResult]:
    """Run apps from :func:`make_secagg_apps` on Flower's Ray simulation backend.

    Returns the :class:`RoundResult` of every round (collected on the server next to
    any ``on_aggregate`` callback; the ServerApp runs in a thread of this process,
    the ClientApps in Ray actors). Raises
    :class:`FederationError` if a round produced no aggregate (SecAgg+ halted) or
    the ServerApp failed. Restores ``PYTHONPATH``, which Flower's Ray backend
    overwrites in this process.

    Args:
        num_supernodes: simulated phones, partition ids ``0..num_supernodes-1``.
        num_rounds: rounds expected (to detect halted rounds); default: the apps'.
        num_cpus: CPUs Ray may use in all; client_num_cpus: per ClientApp.
        allow_skipped: return skipped rounds (``RoundResult.skipped``, ``reason``; the model
            unchanged) instead of raising :class:`FederationError` for them.
    """
    from flwr.simulation import run_simulation

    expected = num_rounds if num_rounds is not None else getattr(server_app, "_edge_gr_num_rounds", None)
    results: list[RoundResult] = []
    sink = getattr(server_app, "_edge_gr_results", None)
    if sink is None:
        raise FederationError("server_app was not built by make_secagg_apps", hint="build it with make_secagg_apps")
    sink.append(results)
    saved = os.environ.get("PYTHONPATH")
    # Flower's Ray backend hands the driver's sys.path to the actors via PYTHONPATH;
    # put this checkout's root first too, so actors never import another copy of
    # device_sim (e.g. an editable install pointing at a different worktree).
    root = str(Path(__file__).resolve().parents[2])
    os.environ["PYTHONPATH"] = os.pathsep.join([root, saved] if saved else [root])
    backend_config = {
        "client_resources": {"num_cpus": client_num_cpus, "num_gpus": 0.0},
        # address="local": always a private Ray instance, never another user's `ray start` cluster
        "init_args": {"address": "local", "num_cpus": num_cpus, "num_gpus": 0},
    }
    try:
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=num_supernodes,
                       backend_config=backend_config, verbose_logging=verbose)
    except Exception as e:  # noqa: BLE001 - Flower wraps everything in RuntimeError
        raise FederationError(
            f"the federated simulation failed: {type(e).__name__}: {e}",
            hint="read the Flower log above (ServerApp / ClientApp traceback)",
        ) from e
    finally:
        sink.remove(results)
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    done = [r.server_round for r in results]
    if expected is not None and done != list(range(1, expected + 1)):
        missing = sorted(set(range(1, expected + 1)) - set(done))
        raise FederationError(
            f"rounds {missing} produced no aggregate (SecAgg+ halted: too few live neighbours, "
            "or every client failed)",
            hint="lower drop_fraction or reconstruction_threshold, raise num_shares, or read the client errors above",
        )
    skipped = [r for r in results if r.skipped]
    if skipped and not allow_skipped:
        reasons = "; ".join(f"round {r.server_round}: {r.reason}" for r in skipped)
        raise FederationError(
            f"rounds {[r.server_round for r in skipped]} produced no aggregate, the global model was left "
            f"unchanged ({reasons})",
            hint="lower drop_fraction or reconstruction_threshold, raise num_shares, or read the client errors above; "
            "pass allow_skipped=True to get the skipped rounds back",
        )
    return results
