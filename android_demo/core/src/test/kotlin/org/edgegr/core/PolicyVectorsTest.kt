package org.edgegr.core

import org.junit.Assert.assertEquals
import org.junit.Test
import org.junit.runner.RunWith
import org.junit.runners.Parameterized

/** [VariantPolicy.choose] over battery traces against `edge_gr.policy.VariantPolicy.choose`. */
@RunWith(Parameterized::class)
class PolicyVectorsTest(private val name: String, private val t: Map<String, Any?>) {
    companion object {
        @JvmStatic
        @Parameterized.Parameters(name = "{0}")
        fun traces(): Collection<Array<Any>> = Vectors.json("policy.json")["traces"].list().map { arrayOf<Any>(it.obj()["name"] as String, it.obj()) }

        fun policy(cfg: Map<String, Any?>): VariantPolicy {
            val thresholds = cfg["thresholds"]?.list()?.map { it.list()[0].num() to (it.list()[1] as String) } ?: listOf(0.20 to "int4", 0.50 to "int8")
            return VariantPolicy(cfg["variants"].list().map { it as String }, thresholds = thresholds,
                default = cfg["default"] as String? ?: "fp16", margin = cfg["margin"]?.num() ?: 0.05,
                sizesMb = cfg["sizes_mb"]?.obj()?.mapValues { it.value.num() } ?: emptyMap(),
                minDwellS = cfg["min_dwell_s"]?.num() ?: 0.0)
        }

        fun state(s: Map<String, Any?>) = DeviceState(battery = s["battery"].num(), charging = s["charging"] as Boolean? ?: false,
            thermal = s["thermal"] as String? ?: "nominal", freeMemoryMb = s["free_memory_mb"]?.num() ?: Double.POSITIVE_INFINITY,
            t = s["t"]?.num())
    }

    @Test
    fun agreesWithPython() {
        val p = policy(t["config"].obj())
        val states = t["states"].list()
        val expected = t["expected"].list()
        assertEquals(expected.size, states.size)
        for ((i, raw) in states.withIndex()) {
            val s = state(raw.obj())
            val v = p.choose(s)
            val want = expected[i].list()
            val d = p.lastDecision!!
            assertEquals("$name step $i ($s): variant; reasons ${d.reasons}", want[0] as String, v)
            assertEquals("$name step $i ($s): battery tier", want[1].int(), d.tier)
            assertEquals("$name step $i ($s): since", want[2]?.num(), d.since)
        }
    }
}
