package org.edgegr.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test

class PolicyTest {
    private val all = listOf("fp32", "fp16", "int8", "int4")

    @Test
    fun docstringExamples() {  // edge_gr/policy.py's doctest
        val p = VariantPolicy(all)
        assertEquals(listOf("fp16", "int8", "int8", "int4", "int4", "int8"), listOf(0.9, 0.45, 0.22, 0.18, 0.22, 0.26).map { p.choose(DeviceState(it)) })
        assertEquals("fp32", p.choose(DeviceState(0.1, charging = true)))
        assertEquals("int4", p.choose(DeviceState(0.9, thermal = "critical")))
        val q = VariantPolicy(listOf("fp32", "int8"))
        assertEquals(listOf("fp32", "int8"), listOf(0.9, 0.1).map { q.choose(DeviceState(it)) })
        val r = VariantPolicy(listOf("int4", "int8", "fp16"))
        assertEquals(listOf(1, 0, 1), listOf(r.batteryTier(0.21), r.batteryTier(0.21, 0), r.batteryTier(0.26, 0)))
        assertEquals("fp32", VariantPolicy(listOf("int8", "fp32")).nearest("fp16"))
    }

    @Test
    fun chapterThresholds() {
        val p = VariantPolicy(all)
        val cases = listOf(1.0 to "fp16", 0.5 to "fp16", 0.4999 to "int8", 0.2 to "int8", 0.1999 to "int4", 0.0 to "int4")
        for ((b, want) in cases) assertEquals("battery $b", want, p.decide(DeviceState(b)).variant)
    }

    @Test
    fun dwellDelaysStepsUpOnly() {
        val p = VariantPolicy(all, minDwellS = 60.0)
        var d = p.decide(DeviceState(0.1, t = 0.0))
        assertEquals("int4", d.variant)
        d = p.decide(DeviceState(0.9, t = 30.0), d)
        assertEquals("int4", d.variant)  // up, too early
        assertTrue(d.reasons.last(), d.reasons.last().startsWith("dwell: keep int4"))
        d = p.decide(DeviceState(0.9, t = 61.0), d)
        assertEquals("fp16", d.variant)
        d = p.decide(DeviceState(0.1, t = 62.0), d)
        assertEquals("int4", d.variant)  // down: at once
        try {
            p.decide(DeviceState(0.9), d)
            fail("dwell without time accepted")
        } catch (e: InputError) {
            assertTrue("${e.message}", "${e.message}".startsWith("min_dwell_s needs the time of each reading"))
        }
    }

    @Test
    fun badInputsAreRefusedWithAHint() {
        val bad = listOf<Pair<() -> Any, String>>(
            { DeviceState(1.5) } to "battery must be a fraction in [0, 1]",
            { DeviceState(Double.NaN) } to "battery must be a fraction in [0, 1]",
            { DeviceState(0.5, thermal = "hot") } to "unknown thermal state 'hot'",
            { DeviceState(0.5, freeMemoryMb = -1.0) } to "free_memory_mb must be >= 0",
            { VariantPolicy(listOf("mixed", "pruned-30")) } to "is a known variant",
            { VariantPolicy(all, thresholds = listOf(0.5 to "int8", 0.2 to "int4")) } to "thresholds must be ascending",
            { VariantPolicy(all, thresholds = listOf(0.5 to "int2")) } to "threshold variant 'int2'",
            { VariantPolicy(all, sizesMb = mapOf("fp32" to 1.0)) } to "sizes_mb lacks")
        for ((make, msg) in bad) {
            try {
                make()
                fail("accepted: $msg")
            } catch (e: InputError) {
                assertTrue("'${e.message}' should contain '$msg'", "${e.message}".contains(msg) && "${e.message}".contains(". To fix: "))
            }
        }
    }
}
