package org.edgegr.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.fail
import org.junit.Test
import org.junit.runner.RunWith
import org.junit.runners.Parameterized

/** [beamSearch] against `edge_gr.decode.beam_search` on batches with padding (fewer valid IDs than k). */
@RunWith(Parameterized::class)
class BeamVectorsTest(private val name: String, private val c: Map<String, Any?>) {
    companion object {
        @JvmStatic
        @Parameterized.Parameters(name = "{0}")
        fun cases(): Collection<Array<Any>> = Vectors.json("beam.json")["cases"].list().map { arrayOf<Any>(it.obj()["name"] as String, it.obj()) }
    }

    @Test
    fun agreesWithPython() {
        val ids = SemanticIds(c["items"].list().map { it as String }, c["codes"].list().map { it.ints() }.toTypedArray(), c["levels"].ints())
        val logp = HashMap<List<Int>, DoubleArray>()  // (query, code prefix...) -> log-probabilities
        for (e in c["logp"].list()) logp[e.list()[0].ints().toList()] = e.list()[1].list().map { it.num() }.toDoubleArray()
        val wantItems = c["expected_items"].list()
        val wantScores = c["expected_scores"].list()
        for (q in 0 until c["n"].int()) {
            val r = beamSearch({ prefixes ->
                Array(prefixes.size) { b ->
                    val key = listOf(q) + prefixes[b].toList()
                    logp[key] ?: throw AssertionError("$name: Kotlin asked for prefix $key, which Python never scored")
                }
            }, ids.trie, beam = c["beam"].int(), k = c["k"].int())
            assertArrayEquals("$name query $q: items", wantItems[q].ints(), r.items)
            val ws = wantScores[q].list().map { it.num() }
            for (j in ws.indices) if (!sameScore(ws[j], r.scores[j])) fail("$name query $q rank $j: Kotlin ${r.scores[j]}, Python ${ws[j]}")
        }
    }
}
