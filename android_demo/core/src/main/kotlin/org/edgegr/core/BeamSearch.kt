package org.edgegr.core

/**
 * Trie-constrained beam search for one query, a line-by-line port of `edge_gr/decode.py`
 * (which runs `n` queries at once; each query's search is independent, so one at a time
 * gives the same result).
 *
 * `step(prefixes)` maps the current beams' ID prefixes (`B` arrays of `l` codes) to
 * log-probabilities of the next level's codes (`B` arrays of `levels[l]`). Codes that would
 * leave the trie are masked before the top-B selection, so every returned ID is a catalogue
 * item. NaN and infinite log-probabilities count as -1e30 (a NaN must never win). Ties are
 * broken by beam order then code (a stable sort), exactly as numpy's stable argsort does.
 */
class Ranked(
    val items: IntArray,     // leaf indices (rows of SemanticIds), -1 where fewer than k valid IDs exist
    val scores: DoubleArray  // summed log-probabilities, best first; -inf for the padding
)

fun beamSearch(step: (List<IntArray>) -> Array<DoubleArray>, trie: Trie, beam: Int, k: Int): Ranked {
    if (beam < k) throw IllegalArgumentException("beam ($beam) must be >= k ($k)")
    val depth = trie.levels.size
    var prefixes: List<IntArray> = listOf(IntArray(0))
    var nodes = intArrayOf(0)
    var scores = doubleArrayOf(0.0)
    for (level in 0 until depth) {
        val kk = trie.levels[level]
        val b = prefixes.size
        val logp = step(prefixes)
        if (logp.size != b || logp.any { it.size != kk })
            throw IllegalArgumentException("step returned ${logp.size} rows of ${logp.map { it.size }.distinct()} codes, expected $b rows of $kk")
        val total = DoubleArray(b * kk)
        for (i in 0 until b) {
            val alive = nodes[i] >= 0
            for (c in 0 until kk) {
                var lp = logp[i][c]
                if (lp.isNaN() || lp.isInfinite()) lp = -1e30
                total[i * kk + c] = if (alive && trie.allowed(level, nodes[i], c)) scores[i] + lp else Double.NEGATIVE_INFINITY
            }
        }
        val width = minOf(if (level < depth - 1) beam else maxOf(k, 1), total.size)
        // stable sort by descending total; `<`/`>` (not Double.compare) so that -0.0 == 0.0 as in numpy
        val order = (0 until total.size).sortedWith(Comparator { x, y ->
            val a = total[x]
            val c = total[y]
            if (a > c) -1 else if (a < c) 1 else 0
        }).subList(0, width)
        val newScores = DoubleArray(width)
        val newNodes = IntArray(width)
        val newPrefixes = ArrayList<IntArray>(width)
        for ((j, o) in order.withIndex()) {
            val src = o / kk
            val code = o % kk
            newScores[j] = total[o]
            val parent = nodes[src]
            newNodes[j] = if (isFinite(total[o])) trie.step(level, maxOf(parent, 0), code) else -1
            val p = prefixes[src].copyOf(prefixes[src].size + 1)
            p[p.size - 1] = code
            newPrefixes.add(p)
        }
        scores = newScores
        nodes = newNodes
        prefixes = newPrefixes
    }
    val items = IntArray(maxOf(k, scores.size)) { -1 }
    val outScores = DoubleArray(items.size) { Double.NEGATIVE_INFINITY }
    for (j in scores.indices) {
        outScores[j] = scores[j]
        items[j] = if (isFinite(scores[j])) nodes[j] else -1
    }
    return Ranked(items, outScores)
}

internal fun isFinite(x: Double): Boolean = !x.isNaN() && !x.isInfinite()
