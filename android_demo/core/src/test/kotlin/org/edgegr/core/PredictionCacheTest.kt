package org.edgegr.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertNull
import org.junit.Test

class PredictionCacheTest {
    private val hits = (0 until 5).map { Hit("i$it", -it.toDouble()) }

    @Test
    fun largerKServesSmallerAndVariantIsPartOfTheKey() {
        val c = PredictionCache(historySuffix = 2, clock = { 0.0 })
        c.put("executorch-int8", listOf("a", "b", "c"), 5, hits)
        assertEquals(hits.take(3), c.get("executorch-int8", listOf("z", "b", "c"), 3))  // same last two items
        assertNull(c.get("executorch-int8", listOf("a", "b", "c"), 10))   // computed for k=5 only
        assertNull(c.get("executorch-int4", listOf("a", "b", "c"), 3))    // another variant's answer
        c.put("v", listOf("x"), 10, hits)                                    // all there is: 5 < 10
        assertEquals(hits, c.get("v", listOf("x"), 20))
        assertEquals(2, c.hits)
        assertEquals(2, c.misses)
    }

    @Test
    fun leastRecentlyUsedIsEvictedAndEntriesExpire() {
        var now = 0.0
        val c = PredictionCache(maxEntries = 2, ttlS = 10.0, clock = { now })
        c.put("v", listOf("a"), 1, hits)
        c.put("v", listOf("b"), 1, hits)
        c.get("v", listOf("a"), 1)                 // a is now the most recent
        c.put("v", listOf("c"), 1, hits)          // evicts b
        assertNull(c.get("v", listOf("b"), 1))
        assertEquals(1, c.get("v", listOf("a"), 1)!!.size)
        assertEquals(1, c.evictions)
        now = 11.0
        assertNull(c.get("v", listOf("a"), 1))
        assertEquals(1, c.size)
    }
}
