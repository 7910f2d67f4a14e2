package org.edgegr.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test
import org.junit.runner.RunWith
import org.junit.runners.Parameterized
import java.io.File

/**
 * The Kotlin request path (history -> encoder row -> decoder ids -> log-softmax -> constrained beam
 * search -> hits, or the popularity fallback) against Python's `Retriever.search` on the same
 * bundle, with the decoder replayed from the logits the Python runtime computed.
 */
@RunWith(Parameterized::class)
class SearchVectorsTest(private val name: String, private val bundleDir: File, private val q: Map<String, Any?>) {
    companion object {
        private val bundles = HashMap<File, RecBundle>()

        /** search.json (synthetic logits) and, when make_vectors.py ran with --real, search-real.json (a trained ExecuTorch model). */
        @JvmStatic
        @Parameterized.Parameters(name = "{0}")
        fun queries(): Collection<Array<Any>> {
            val files = Vectors.dir.listFiles { f -> f.name.startsWith("search") && f.name.endsWith(".json") }!!.sortedBy { it.name }
            return files.flatMap { f ->
                val doc = Vectors.json(f.name)
                val dir = File(Vectors.dir, doc["bundle"] as String)
                doc["queries"].list().map { arrayOf<Any>(f.name.removeSuffix(".json") + "/" + it.obj()["name"], dir, it.obj()) }
            }
        }

        @Synchronized
        fun bundle(dir: File): RecBundle = bundles.getOrPut(dir) { RecBundle.open(dir) }
    }

    /** Decoder replay: logits keyed by the decoder ids up to the position read. */
    private class Replay(val name: String, val expectedSrc: LongArray, val rows: Map<List<Long>, FloatArray>) : Model {
        var encodes = 0
        var decodes = 0
        override fun encode(src: LongArray): Encoded {
            encodes++
            assertArrayEquals("$name: encoder input", expectedSrc, src)
            return object : Encoded {
                override fun logits(decoderInput: Array<LongArray>, position: Int): Array<FloatArray> {
                    decodes++
                    return Array(decoderInput.size) { b ->
                        val key = decoderInput[b].copyOfRange(0, position + 1).toList()
                        rows[key] ?: throw AssertionError("$name: the Kotlin search asked for decoder ids $key, which the Python runtime never ran")
                    }
                }
            }
        }
    }

    @Test
    fun agreesWithPythonRuntime() {
        val rows = HashMap<List<Long>, FloatArray>()
        for (e in q["logits"].list()) {
            val pair = e.list()
            rows[pair[0].list().map { (it as Number).toLong() }] = pair[1].list().map { it.num().toFloat() }.toFloatArray()
        }
        val src = q["src"].list().map { (it as Number).toLong() }.toLongArray()
        val history = q["history"].list().map { it as String }
        val model = Replay(name, src, rows)
        val b = bundle(bundleDir)
        val ids = b.ids
        val maxLen = b.manifest.runtime.maxLen
        val hits = b.recommender.search(model, history, k = q["k"].int(), beam = q["beam"].int())
        val expected = q["expected"].list().map { it.list() }

        assertArrayEquals("$name: encoder input", src, recSource(history, ids, maxLen))
        assertEquals("$name: item ids", expected.map { it[0] as String }, hits.map { it.itemId })
        for ((i, h) in hits.withIndex()) {
            val want = expected[i][1].num()
            if (!sameScore(want, h.score)) fail("$name: score of ${h.itemId} (rank $i): Kotlin ${h.score}, Python $want")
        }
        if (src.all { it == 0L }) {
            assertEquals("$name: the popularity fallback runs no model", 0, model.encodes)
        } else {
            assertEquals("$name: one encoder call", 1, model.encodes)
            assertEquals("$name: one decoder call per level", ids.levels.size, model.decodes)
            assertTrue("$name: scores are best first", hits.zipWithNext().all { (a, b) -> a.score >= b.score })
        }
    }
}

/** The trie built in Kotlin from ids.json has the same child tables as Python's. */
class TrieVectorsTest {
    @Test
    fun sameTablesAsPython() {
        val doc = Vectors.json("search.json")
        val ids = SemanticIds.load(File(Vectors.dir, doc["bundle"] as String + "/ids.json"))
        assertEquals(doc["items"].list(), ids.items)
        val want = doc["trie"].list()
        assertEquals(want.size, ids.trie.children.size)
        for (l in want.indices) {
            val flat = want[l].list().flatMap { row -> row.list().map { it.int() } }.toIntArray()
            assertArrayEquals("level $l", flat, ids.trie.children[l])
        }
        for ((i, c) in doc["codes"].list().withIndex()) assertEquals("leaf of item $i", i, ids.trie.leaf(c.ints()))
    }
}
