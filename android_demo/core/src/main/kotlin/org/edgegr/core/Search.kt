package org.edgegr.core

/**
 * The request path of `edge_gr/runtime.py` for recommendation bundles, without the model:
 * history -> encoder input, encoder once, then the decoder once per ID level inside the
 * trie-constrained beam search. The model is anything that implements [Model] (the Android app
 * wraps ExecuTorch's `Module`; the JVM tests replay logits recorded from the Python runtime).
 *
 * Model I/O ("enc-kv/dec-full-prefix/v1"): the decoder takes `(B, L)` decoder ids per query
 * (0 = BOS, then `1 + offset[level] + code`; positions after the real prefix are 0 and ignored,
 * the decoder is causal) and returns logits `(B, L, V)` with `V = sum(levels)`; position `l`
 * is read for level `l`, sliced to that level's codes and log-softmaxed.
 */
data class Hit(val itemId: String, val score: Double, val title: String = "")

/** One query's encoder output, ready to run the decoder on any number of beams. */
interface Encoded {
    /** Raw logits at `position` (`B` rows of `V`) for `B` rows of decoder ids (each of length L). */
    fun logits(decoderInput: Array<LongArray>, position: Int): Array<FloatArray>
}

/** A loaded variant: runs the encoder on one `(max_len)` source row. */
interface Model {
    fun encode(src: LongArray): Encoded
    /** The encoder input length this variant reads (its manifest `static.max_len`); null = the bundle's `runtime.max_len`. */
    val maxLen: Int? get() = null
}

/** `[0, levels[0], levels[0] + levels[1], ...]`: where each level's codes start in the vocabulary. */
fun levelOffsets(levels: IntArray): IntArray {
    val off = IntArray(levels.size)
    for (l in 1 until levels.size) off[l] = off[l - 1] + levels[l - 1]
    return off
}

/** Decoder ids `(B, L)` for beams whose prefixes have `l` codes: BOS, then `1 + offset + code`, then 0. */
fun decoderInput(prefixes: List<IntArray>, levels: IntArray): Array<LongArray> {
    val off = levelOffsets(levels)
    return Array(prefixes.size) { b ->
        val row = LongArray(levels.size)
        val p = prefixes[b]
        for (i in p.indices) row[i + 1] = (p[i] + off[i] + 1).toLong()
        row
    }
}

/**
 * `log_softmax(x[offset until offset + size])` in double precision, with numpy's semantics:
 * a NaN anywhere gives NaN everywhere (the beam search then treats the row as -1e30).
 */
fun logSoftmax(x: FloatArray, offset: Int, size: Int): DoubleArray {
    var m = Double.NEGATIVE_INFINITY
    var nan = false
    for (i in 0 until size) {
        val v = x[offset + i].toDouble()
        if (v.isNaN()) nan = true else if (v > m) m = v
    }
    if (nan) return DoubleArray(size) { Double.NaN }
    var sum = 0.0
    for (i in 0 until size) sum += Math.exp(x[offset + i].toDouble() - m)
    val lse = Math.log(sum)
    return DoubleArray(size) { x[offset + it].toDouble() - m - lse }
}

/** Encoder input of a history (item ids, oldest first): rows `index + 1`, unknown ids dropped, last `maxLen`, left-padded with 0. */
fun recSource(history: List<String>, ids: SemanticIds, maxLen: Int): LongArray {
    val rows = history.map { ids.indexOf(it) }.filter { it >= 0 }.map { (it + 1).toLong() }
    val kept = if (rows.size > maxLen) rows.subList(rows.size - maxLen, rows.size) else rows
    val src = LongArray(maxLen)
    for ((i, r) in kept.withIndex()) src[maxLen - kept.size + i] = r
    return src
}

/** Top-`k` items of `model` for an encoded query (the body of Python's `Retriever._decode`). */
fun decode(encoded: Encoded, ids: SemanticIds, k: Int, beam: Int): Ranked {
    val levels = ids.levels
    val off = levelOffsets(levels)
    val step = { prefixes: List<IntArray> ->
        val l = prefixes[0].size
        val raw = encoded.logits(decoderInput(prefixes, levels), l)
        if (raw.size != prefixes.size || raw.any { it.size < off[l] + levels[l] })
            throw IllegalStateException("the decoder returned ${raw.size} rows of ${raw.map { it.size }.distinct()} logits, expected ${prefixes.size} of >= ${off[l] + levels[l]}")
        Array(raw.size) { logSoftmax(raw[it], off[l], levels[l]) }
    }
    return beamSearch(step, ids.trie, beam, k)
}

/**
 * A loaded recommendation bundle's non-model parts: IDs, titles and the popularity fallback.
 * [search] mirrors Python's `Retriever.search(history, k, beam=20)` for rec bundles.
 */
class Recommender(
    val ids: SemanticIds,
    val maxLen: Int,
    val popularity: List<String> = emptyList(),
    val titles: Map<String, String> = emptyMap()
) {
    fun search(model: Model, history: List<String>, k: Int = 10, beam: Int = 20): List<Hit> {
        if (k < 1 || beam < 1) throw InputError("k and beam must be positive integers, got k=$k, beam=$beam", hint = "e.g. k=10, beam=20")
        val kk = minOf(k, ids.size)
        val bb = maxOf(beam, kk)
        val src = recSource(history, ids, model.maxLen ?: maxLen)
        if (src.all { it == 0L })  // no known item: the bundle's popularity ranking (score NaN), as in Python
            return popularity.take(kk).map { Hit(it, Double.NaN, titles[it] ?: "") }
        val r = decode(model.encode(src), ids, kk, bb)
        val out = ArrayList<Hit>()
        for (j in r.items.indices) if (r.items[j] >= 0) {
            val item = ids.items[r.items[j]]
            out.add(Hit(item, r.scores[j], titles[item] ?: ""))
        }
        return out
    }
}
