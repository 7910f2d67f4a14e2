package org.edgegr.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test

class SearchTest {
    private val ids = SemanticIds((0 until 6).map { "i$it" },
        arrayOf(intArrayOf(0, 0), intArrayOf(0, 1), intArrayOf(0, 2), intArrayOf(1, 0), intArrayOf(1, 2), intArrayOf(2, 1)), intArrayOf(3, 3))

    @Test
    fun decoderInputsUseBosAndLevelOffsets() {
        val levels = intArrayOf(4, 3, 5)
        assertArrayEquals(intArrayOf(0, 4, 7), levelOffsets(levels))
        val rows = decoderInput(listOf(intArrayOf(2, 1), intArrayOf(0, 0)), levels)
        assertArrayEquals(longArrayOf(0, 3, 6), rows[0])   // BOS, 1 + 0 + 2, 1 + 4 + 1
        assertArrayEquals(longArrayOf(0, 1, 5), rows[1])
        assertArrayEquals(longArrayOf(0, 0, 0), decoderInput(listOf(IntArray(0)), levels)[0])
    }

    @Test
    fun sourceRowIsLeftPaddedLastMaxLenKnownItems() {
        assertArrayEquals(longArrayOf(0, 0, 1, 4), recSource(listOf("i0", "nope", "i3"), ids, 4))
        assertArrayEquals(longArrayOf(3, 4, 5), recSource(listOf("i0", "i1", "i2", "i3", "i4"), ids, 3))
        assertArrayEquals(longArrayOf(0, 0), recSource(emptyList(), ids, 2))
    }

    @Test
    fun logSoftmaxOfASlice() {
        val x = floatArrayOf(9f, 1f, 2f, 3f, 9f)
        val y = logSoftmax(x, 1, 3)
        val z = Math.log(Math.exp(1.0) + Math.exp(2.0) + Math.exp(3.0))
        assertArrayEquals(doubleArrayOf(1 - z, 2 - z, 3 - z), y, 1e-12)
        assertTrue(logSoftmax(floatArrayOf(1f, Float.NaN), 0, 2).all { it.isNaN() })  // numpy: a NaN poisons the row
    }

    @Test
    fun nanLogitsNeverWin() {
        // level 0: code 1 is NaN, code 0 is likely; the NaN row must lose to every finite one
        val r = beamSearch({ p -> Array(p.size) { if (p[0].isEmpty()) doubleArrayOf(-0.1, Double.NaN, -5.0) else doubleArrayOf(-1.0, -2.0, -3.0) } },
            ids.trie, beam = 6, k = 6)
        assertEquals(listOf(0, 1, 2, 5, 3, 4), r.items.toList())  // prefix 0 (-0.1), then 2 (-5), then the NaN prefix 1 (-1e30)
        assertTrue(r.scores[5] < -1e29)
    }

    @Test
    fun everyResultIsAnItemAndBeamBelowKIsRefused() {
        val r = beamSearch({ p -> Array(p.size) { DoubleArray(3) { c -> -c.toDouble() } } }, ids.trie, beam = 2, k = 2)
        assertTrue(r.items.all { it in 0 until ids.size })
        try {
            beamSearch({ p -> Array(p.size) { DoubleArray(3) } }, ids.trie, beam = 1, k = 2)
            fail("beam < k accepted")
        } catch (e: IllegalArgumentException) {
            assertEquals("beam (1) must be >= k (2)", e.message)
        }
    }

    @Test
    fun aVariantReadingAShorterHistoryGetsOnlyTheNewestItems() {
        val rec = Recommender(ids, 4)
        var seen: LongArray? = null
        val model = object : Model {
            override val maxLen: Int? get() = 2
            override fun encode(src: LongArray): Encoded {
                seen = src
                return object : Encoded {
                    override fun logits(decoderInput: Array<LongArray>, position: Int) = Array(decoderInput.size) { FloatArray(ids.levels.sum()) }
                }
            }
        }
        rec.search(model, listOf("i1", "i2", "i3"), k = 2)
        assertEquals(listOf(ids.items.indexOf("i2") + 1L, ids.items.indexOf("i3") + 1L), seen!!.toList())
    }

    @Test
    fun recommenderChecksKAndBeam() {
        val rec = Recommender(ids, 4, popularity = listOf("i5", "i4"))
        val model = object : Model { override fun encode(src: LongArray): Encoded = throw AssertionError("not called") }
        assertEquals(listOf("i5", "i4"), rec.search(model, listOf("unknown"), k = 5).map { it.itemId })
        try {
            rec.search(model, listOf("i1"), k = 0)
            fail("k = 0 accepted")
        } catch (e: InputError) {
            assertTrue("${e.message}", "${e.message}".contains("k and beam must be positive integers"))
        }
    }
}
