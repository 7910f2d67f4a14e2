package org.edgegr.core

/**
 * Choice of the model variant from the device's state, a port of `edge_gr/policy.py`.
 *
 * The rule: battery < 20% -> int4, < 50% -> int8, else fp16. On top of it: charging -> the best
 * variant; thermal "serious" / "critical" -> one / two levels down; a variant not in use must fit
 * in free memory; a hysteresis margin so a battery hovering at a threshold does not flap; an
 * optional minimum dwell time before stepping *up* again (steps down are never delayed).
 * [VariantPolicy.decide] is a pure function of (state, previous decision); [VariantPolicy.choose]
 * remembers its last decision. Only variants the bundle has are chosen (the wanted one is mapped
 * to the nearest available one; a tie goes to the better one).
 */
val LADDER: List<String> = listOf("int4", "int8", "fp16", "fp32")  // smallest / cheapest first
val THERMAL_STEPS: Map<String, Int> = linkedMapOf("nominal" to 0, "fair" to 0, "serious" to 1, "critical" to 2)

/** One reading of the device. `t` (seconds, any monotonic origin) is needed only for dwell times. */
data class DeviceState(
    val battery: Double,                                   // state of charge, 0..1
    val charging: Boolean = false,
    val thermal: String = "nominal",                       // nominal | fair | serious | critical
    val freeMemoryMb: Double = Double.POSITIVE_INFINITY,   // memory the app may still use, not counting the variant in use
    val t: Double? = null                                  // time of the reading (s)
) {
    init {
        if (!(battery >= 0.0 && battery <= 1.0))
            throw InputError("battery must be a fraction in [0, 1], got $battery", hint = "pass the state of charge as a fraction, e.g. 0.42 for 42%")
        if (thermal !in THERMAL_STEPS)
            throw InputError("unknown thermal state '$thermal'", hint = "use one of ${THERMAL_STEPS.keys.joinToString(", ")}")
        if (!(freeMemoryMb >= 0.0))
            throw InputError("free_memory_mb must be >= 0, got $freeMemoryMb", hint = "pass megabytes available to the app")
    }
}

/** What the policy chose and why; feed it back as `previous` to the next decide(). */
data class Decision(
    val variant: String,        // the variant to serve
    val tier: Int,              // battery tier after hysteresis (0 = lowest battery)
    val since: Double? = null,  // state.t when `variant` was adopted (dwell time)
    val reasons: List<String> = emptyList()
)

class VariantPolicy(
    variants: Collection<String>,
    thresholds: List<Pair<Double, String>> = listOf(0.20 to "int4", 0.50 to "int8"),
    default: String = "fp16",
    val margin: Double = 0.05,
    sizesMb: Map<String, Double> = emptyMap(),
    val minDwellS: Double = 0.0,
    order: List<String> = LADDER
) {
    val order: List<String> = order.toList()
    private val rank: Map<String, Int> = this.order.withIndex().associate { it.value to it.index }
    /** The bundle's known variants, cheapest first. */
    val variants: List<String> = variants.filter { it in rank }.distinct().sortedBy { rank.getValue(it) }
    val thresholds: List<Pair<Double, String>> = thresholds.toList()
    val tiers: List<String>
    val sizesMb: Map<String, Double> = sizesMb.toMap()
    private var last: Decision? = null

    init {
        if (this.variants.isEmpty())
            throw InputError("none of the bundle's variants ${variants.toList()} is a known variant",
                hint = "name variants among ${this.order.joinToString(", ")} or pass order=[...] cheapest first")
        for (v in this.thresholds.map { it.second } + default)
            if (v !in rank) throw InputError("threshold variant '$v' is not in the order ${this.order}", hint = "use a known variant name")
        val bs = this.thresholds.map { it.first }
        if (bs != bs.sorted()) throw InputError("thresholds must be ascending in battery", hint = "e.g. ((0.2, 'int4'), (0.5, 'int8'))")
        tiers = this.thresholds.map { it.second } + default
        val missing = this.variants.filter { this.sizesMb.isNotEmpty() && it !in this.sizesMb }
        if (missing.isNotEmpty()) throw InputError("sizes_mb lacks $missing", hint = "give a size for every variant of the bundle, or none")
    }

    // -- pure parts ---------------------------------------------------------------------------
    private fun rawTier(b: Double): Int = thresholds.count { b >= it.first }

    /** Tier of `battery` (0 = below the lowest threshold); moving up needs `margin` more. */
    fun batteryTier(battery: Double, previousTier: Int? = null): Int {
        val raw = rawTier(battery)
        if (previousTier == null || raw <= previousTier) return raw  // down (or same): at once
        return maxOf(previousTier, rawTier(battery - margin))
    }

    /** The available variant nearest to `wanted` in the order (ties: the better one). */
    fun nearest(wanted: String): String {
        val r = rank.getValue(wanted)
        var best = variants[0]
        for (v in variants) {
            val d = Math.abs(rank.getValue(v) - r)
            val bd = Math.abs(rank.getValue(best) - r)
            if (d < bd || (d == bd && rank.getValue(v) > rank.getValue(best))) best = v
        }
        return best
    }

    fun stepDown(variant: String, n: Int): String = variants[maxOf(0, variants.indexOf(variant) - n)]

    private fun fits(v: String, state: DeviceState, resident: String?): Boolean =
        v == resident || sizesMb.getValue(v) <= state.freeMemoryMb

    /** Pure: the decision for `state` given the previous one (null at start). */
    fun decide(state: DeviceState, previous: Decision? = null): Decision {
        val reasons = ArrayList<String>()
        val tier = batteryTier(state.battery, previous?.tier)
        var v: String
        if (state.charging) {
            v = variants.last()
            reasons.add("charging: best variant")
        } else {
            v = nearest(tiers[tier])
            reasons.add("battery ${Math.round(state.battery * 100)}%: tier $tier -> ${tiers[tier]}" +
                (if (v == tiers[tier]) "" else " (nearest available: $v)"))
        }
        val steps = THERMAL_STEPS.getValue(state.thermal)
        if (steps > 0) {
            v = stepDown(v, steps)
            reasons.add("thermal ${state.thermal}: $steps level(s) down -> $v")
        }
        val resident = previous?.variant
        if (sizesMb.isNotEmpty() && !fits(v, state, resident)) {
            val smaller = variants.subList(0, variants.indexOf(v)).reversed().filter { fits(it, state, resident) }
            val mb = Math.round(state.freeMemoryMb)
            when {
                smaller.isNotEmpty() -> { v = smaller[0]; reasons.add("free memory $mb MB: largest variant that fits -> $v") }
                resident != null -> { v = resident; reasons.add("free memory $mb MB: no smaller variant fits, keep $v") }
                else -> { v = variants[0]; reasons.add("free memory $mb MB: nothing fits, smallest -> $v") }
            }
        }
        var since = state.t
        if (previous != null && v != previous.variant) {
            val up = rank.getValue(v) > rank.getValue(previous.variant)
            if (up && minDwellS > 0) {
                if (state.t == null || previous.since == null)
                    throw InputError("min_dwell_s needs the time of each reading", hint = "pass DeviceState(..., t = elapsed seconds)")
                if (state.t - previous.since < minDwellS) {
                    reasons.add("dwell: keep ${previous.variant} until t=${previous.since + minDwellS}")
                    v = previous.variant
                }
            }
        }
        if (previous != null && v == previous.variant) since = previous.since
        return Decision(v, tier, since, reasons)
    }

    // -- stateful convenience -------------------------------------------------------------------
    /** decide() with the remembered previous decision; remembers the new one. */
    fun choose(state: DeviceState): String {
        val d = decide(state, last)
        last = d
        return d.variant
    }

    val lastDecision: Decision? get() = last

    /** Forget (or set) the remembered decision, e.g. after a failed switch. */
    fun reset(previous: Decision? = null) { last = previous }
}

/**
 * The bundle's variants of one backend keyed by precision (`"int8" -> "executorch-int8"`), the
 * names a [VariantPolicy] ranks.
 */
fun variantsByPrecision(manifest: BundleManifest, backend: String): Map<String, String> =
    manifest.variants.filter { it.backend == backend }.associate { it.precision to it.name }
