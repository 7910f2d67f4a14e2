package org.edgegr.core

import java.io.File

/**
 * Semantic IDs and their prefix trie, as in `edge_gr/ids.py`.
 *
 * A semantic ID is `L` small integers, one per level; level `l` has `levels[l]` codes. The trie
 * is stored as dense child tables, one per level: `children[l][node * levels[l] + code]` is the
 * node reached from `node` by `code` (or -1). Node 0 of level 0 is the root; a node at depth `L`
 * is a leaf and its number is the index of the item in [SemanticIds.items] (as in Python;
 * inner nodes are numbered in sorted (parent, code) order, also as in Python).
 */
class Trie(val levels: IntArray, val children: Array<IntArray>) {
    /** Number of nodes at depth `level` (rows of that level's table). */
    fun nodes(level: Int): Int = children[level].size / levels[level]

    /** The node after appending `code` to `node` at `level`, or -1 where that prefix is not an ID's. */
    fun step(level: Int, node: Int, code: Int): Int = children[level][node * levels[level] + code]

    fun allowed(level: Int, node: Int, code: Int): Boolean = step(level, node, code) >= 0

    /** The leaf (item index) of a full code, or -1 if it is not in the trie. */
    fun leaf(code: IntArray): Int {
        if (code.size != levels.size) return -1
        var node = 0
        for (l in code.indices) {
            if (code[l] < 0 || code[l] >= levels[l]) return -1
            node = step(l, node, code[l])
            if (node < 0) return -1
        }
        return node
    }

    operator fun contains(code: IntArray): Boolean = leaf(code) >= 0

    companion object {
        /** Build from `codes[i]` = the ID of item `i` (same numbering as Python's `_build_trie`). */
        fun build(codes: Array<IntArray>, levels: IntArray): Trie {
            val n = codes.size
            val depth = levels.size
            val tables = ArrayList<IntArray>()
            var nodeOf = LongArray(n)   // node of each item's prefix at the current depth
            var nNodes = 1
            for (level in 0 until depth) {
                val k = levels[level]
                val table = IntArray(nNodes * k) { -1 }
                if (level == depth - 1) {
                    for (i in 0 until n) table[(nodeOf[i] * k + codes[i][level]).toInt()] = i
                    tables.add(table)
                    break
                }
                val keys = LongArray(n) { nodeOf[it] * k + codes[it][level] }
                val uniq = keys.distinct().sorted()
                val number = HashMap<Long, Int>()
                for ((j, key) in uniq.withIndex()) {
                    number[key] = j
                    table[key.toInt()] = j
                }
                tables.add(table)
                nodeOf = LongArray(n) { number.getValue(keys[it]).toLong() }
                nNodes = uniq.size
            }
            return Trie(levels.copyOf(), tables.toTypedArray())
        }
    }
}

/** The ID of every catalogue item: `codes[i]` is the ID of `items[i]` (the `ids.json` of a bundle). */
class SemanticIds(val items: List<String>, val codes: Array<IntArray>, val levels: IntArray) {
    private val index = HashMap<String, Int>()
    val trie: Trie by lazy { Trie.build(codes, levels) }

    init {
        val hint = "rebuild the IDs with `edge-gr ids`"
        if (codes.size != items.size || codes.any { it.size != levels.size })
            throw FormatError("codes must have shape (n_items=${items.size}, L=${levels.size})", hint = hint)
        for (c in codes) for (l in c.indices) if (c[l] < 0 || c[l] >= levels[l])
            throw FormatError("a code is outside its level's range", hint = hint)
        for ((i, it) in items.withIndex()) index[it] = i
        if (index.size != items.size) throw FormatError("duplicate item ids in the catalogue", hint = "make catalogue ids unique")
        if (codes.map { it.toList() }.toSet().size != items.size)
            throw FormatError("two items share a semantic ID", hint = "rebuild the IDs: the last level must be collision-free")
    }

    val size: Int get() = items.size

    /** Row of `item`, or -1 if the catalogue has no such item. */
    fun indexOf(item: String): Int = index[item] ?: -1

    fun formatId(item: String): String {
        val i = indexOf(item)
        if (i < 0) throw InputError("unknown item id '$item'", hint = "use an id from the catalogue the IDs were built on")
        return codes[i].joinToString("-")
    }

    companion object {
        const val FORMAT_NAME = "edge-gr-semantic-ids"
        const val FORMAT_VERSION = 1

        /** Read an `ids.json` written by Python's `SemanticIds.save`, checking its format name and version. */
        fun load(path: File): SemanticIds {
            if (!path.isFile) throw FormatError("no semantic-ID file at $path", hint = "build one with `edge-gr ids`")
            val doc = try { Json.parse(path.readText(Charsets.UTF_8)) } catch (e: JsonException) {
                throw FormatError("$path is not a semantic-ID file (${e.message})", hint = "rebuild it with `edge-gr ids`")
            }
            if (doc !is Map<*, *> || doc["format"] != FORMAT_NAME)
                throw FormatError("$path is not an $FORMAT_NAME file", hint = "rebuild it with `edge-gr ids`")
            if (doc["version"] != FORMAT_VERSION.toLong())
                throw FormatError("$path has format version ${pyRepr(doc["version"])}, this edge-gr reads version $FORMAT_VERSION",
                    hint = "rebuild it with this version's `edge-gr ids`")
            try {
                val d = doc.asObj("ids")
                val levels = d.req("levels").asList("levels").map { it.asInt("levels") }.toIntArray()
                val items = d.req("items").asList("items").map { it.asStr("items") }
                val codes = d.req("codes").asList("codes").map { row -> row.asList("codes").map { it.asInt("codes") }.toIntArray() }
                return SemanticIds(items, codes.toTypedArray(), levels)
            } catch (e: JsonTypeError) {
                throw FormatError("$path is malformed (${e.message})", hint = "rebuild it with `edge-gr ids`")
            }
        }
    }
}
