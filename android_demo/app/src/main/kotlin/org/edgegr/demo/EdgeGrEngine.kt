package org.edgegr.demo

import org.edgegr.core.Decision
import org.edgegr.core.DeviceState
import org.edgegr.core.Hit
import org.edgegr.core.PredictionCache
import org.edgegr.core.RecBundle
import org.edgegr.core.BundleError
import org.edgegr.core.SealedError
import org.edgegr.core.VariantPolicy
import org.edgegr.core.variantsByPrecision
import java.io.Closeable
import java.io.File

/**
 * The device request path of edge-gr on Android, as a chain of the core's parts: a verified bundle
 * ([RecBundle]: every file's sha256 checked before anything loads), the battery policy
 * ([VariantPolicy], same rules and hysteresis as `edge_gr.policy`) choosing among the bundle's
 * ExecuTorch variants, a prediction cache ([PredictionCache], LRU) in front of the model, and the
 * trie-constrained beam search of the core over [EtModel]'s encoder and decoder-step methods.
 *
 * Not thread-safe: MainActivity runs every call on one background thread.
 */
class EdgeGrEngine private constructor(val bundle: RecBundle) : Closeable {
    /** One answer: the hits, the variant that computed them, wall time, whether the cache answered. */
    data class Answer(val hits: List<Hit>, val variant: String, val latencyMs: Double, val cached: Boolean)

    private val byPrecision: Map<String, String> = variantsByPrecision(bundle.manifest, "executorch")
    val policy: VariantPolicy
    private var model: EtModel? = null
    var variant: String = ""
        private set
    var decision: Decision? = null
        private set
    private val failed = HashMap<String, Double>()     // variant -> time of its last failed switch (s)
    val errors = ArrayList<String>()                   // failed switches, newest last
    val cache = PredictionCache(maxEntries = 256, historySuffix = 10, ttlS = 600.0)

    init {
        if (byPrecision.isEmpty())
            throw BundleError("the bundle has no executorch variant (it has ${bundle.manifest.variants.map { it.name }})",
                hint = "export one with `edge-gr export --variants executorch:fp32,executorch:int8,executorch:int4`")
        policy = VariantPolicy(byPrecision.keys,
            sizesMb = byPrecision.mapValues { bundle.manifest.variant(it.value).size / 1e6 },
            minDwellS = 30.0)
    }

    /**
     * Apply the policy to a device reading; switch variant when it says so. The new variant is
     * loaded and test-run *before* the old one is released; if that fails the old one keeps
     * serving and the switch is retried after [RETRY_AFTER_S]. Returns the variant serving now.
     */
    fun update(state: DeviceState): String {
        val previous = decision?.let { if (model != null && it.variant != precisionOf(variant)) it.copy(variant = precisionOf(variant)) else it }
        val d = policy.decide(state, if (model == null) null else previous)
        decision = d
        val wanted = byPrecision.getValue(d.variant)
        if (wanted == variant && model != null) return variant
        val now = state.t ?: System.nanoTime() / 1e9
        val lastFail = failed[wanted]
        if (lastFail != null && now - lastFail < RETRY_AFTER_S && model != null) return variant
        val next = try {
            load(wanted)
        } catch (e: BundleError) {
            failed[wanted] = now
            errors.add("$wanted: ${e.message}")
            if (model != null) return variant  // keep serving the old variant
            // nothing serves yet: take the best other variant that loads (as edge_gr.load tries them in turn)
            val fallback = policy.variants.reversed().map { byPrecision.getValue(it) }.filter { it != wanted }
                .firstNotNullOrNullCompat { name -> try { name to load(name) } catch (x: BundleError) { errors.add("$name: ${x.message}"); null } }
                ?: throw e
            model = fallback.second
            variant = fallback.first
            decision = d.copy(variant = precisionOf(fallback.first), reasons = d.reasons + "$wanted does not load: ${fallback.first}")
            return variant
        }
        failed.remove(wanted)
        val old = model
        model = next
        variant = wanted
        old?.close()
        return variant
    }

    /** Top-`k` next items for `history` (item ids, oldest first), from the cache or the model. */
    fun nextUp(history: List<String>, k: Int = 10, beam: Int = 20): Answer {
        val m = model ?: throw IllegalStateException("no variant loaded: call update() first")
        val t0 = System.nanoTime()
        val cached = cache.get(variant, history, k)
        val hits = cached ?: bundle.recommender.search(m, history, k, beam).also { cache.put(variant, history, k, it) }
        return Answer(hits, variant, (System.nanoTime() - t0) / 1e6, cached != null)
    }

    /** Catalogue items whose title (or id) contains `text`, case-insensitively, at most `limit`. */
    fun findTitles(text: String, limit: Int = 50): List<Pair<String, String>> {
        val q = text.trim()
        if (q.length == 0) return emptyList()
        return bundle.titles.entries.asSequence()
            .filter { it.value.contains(q, ignoreCase = true) || it.key.contains(q, ignoreCase = true) }
            .take(limit).map { it.key to it.value }.toList()
    }

    private fun load(name: String): EtModel {
        val v = bundle.manifest.variant(name)
        val seal = v.files["program"]?.sealed
        if (seal != null)  // ExecuTorch's Java Module loads from a file path only; no plaintext .pte is written here
            throw SealedError("variant $name is encrypted (data key '${seal.keyId}'); this demo loads ExecuTorch programs from a "
                + "file path and does not open encrypted variants", hint = "push a bundle exported without --encrypt-key")
        return EtModel.load(bundle.file(v, "program"), bundle.manifest.runtime, name, (v.static["max_beam"] as? Number)?.toInt(), v.maxLen)
    }

    private fun precisionOf(name: String): String = byPrecision.entries.firstOrNull { it.value == name }?.key ?: ""

    override fun close() {
        model?.close()
        model = null
    }

    companion object {
        const val RETRY_AFTER_S = 30.0

        /** Verify and open the bundle folder at `root` (throws [BundleError] saying what to do). */
        fun open(root: File): EdgeGrEngine = EdgeGrEngine(RecBundle.open(root))
    }
}

/** The first non-null `fn(x)` (stdlib's firstNotNullOfOrNull needs Kotlin 1.5; the core stays 1.3-compatible). */
private inline fun <T, R : Any> List<T>.firstNotNullOrNullCompat(fn: (T) -> R?): R? {
    for (x in this) fn(x)?.let { return it }
    return null
}
