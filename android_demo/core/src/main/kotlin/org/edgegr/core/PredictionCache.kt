package org.edgegr.core

/**
 * An LRU cache of predictions for histories, after `edge_gr/cache.py`'s `PredictionCache`:
 * a history's key is its last `historySuffix` items plus the variant that answered (a switch of
 * variant must not serve another variant's answer); an answer computed for `k` serves any
 * request with a smaller or equal `k` (or any `k` if it already held fewer hits than asked:
 * that is all there is). An optional time-to-live uses an injectable clock. Thread-safe.
 */
class PredictionCache(
    val maxEntries: Int = 256,
    val historySuffix: Int = 10,
    val ttlS: Double? = 600.0,
    private val clock: () -> Double = { System.nanoTime() / 1e9 }
) {
    private class Cached(val k: Int, val hits: List<Hit>, val expires: Double)

    private val map = object : LinkedHashMap<List<String>, Cached>(16, 0.75f, true) {
        override fun removeEldestEntry(eldest: MutableMap.MutableEntry<List<String>, Cached>?): Boolean {
            if (size > maxEntries) { evictions++; return true }
            return false
        }
    }
    var hits = 0
        private set
    var misses = 0
        private set
    var evictions = 0
        private set

    init {
        if (maxEntries < 1) throw InputError("a cache needs room for at least one entry", hint = "pass maxEntries >= 1")
        if (historySuffix < 1) throw InputError("historySuffix must be >= 1, got $historySuffix", hint = "pass e.g. 10")
    }

    fun key(variant: String, history: List<String>): List<String> =
        listOf(variant) + history.subList(maxOf(0, history.size - historySuffix), history.size)

    /** The cached top-`k` (a new list), or null. */
    @Synchronized
    fun get(variant: String, history: List<String>, k: Int): List<Hit>? {
        val key = key(variant, history)
        val e = map[key]
        if (e != null && e.expires <= clock()) map.remove(key)
        val live = if (e != null && e.expires > clock()) e else null
        val ok = live != null && (live.k >= k || live.hits.size < live.k)
        if (ok) hits++ else misses++
        return if (ok) live!!.hits.take(k) else null
    }

    @Synchronized
    fun put(variant: String, history: List<String>, k: Int, result: List<Hit>) {
        val expires = if (ttlS != null) clock() + ttlS else Double.POSITIVE_INFINITY
        map[key(variant, history)] = Cached(k, result.toList(), expires)
    }

    @Synchronized
    fun clear() = map.clear()

    val size: Int @Synchronized get() = map.size
}
