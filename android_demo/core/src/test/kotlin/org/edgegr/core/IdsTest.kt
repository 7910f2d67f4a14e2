package org.edgegr.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertFalse
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test
import java.io.File
import java.nio.file.Files

class IdsTest {
    private val ids = SemanticIds(listOf("a", "b", "c"), arrayOf(intArrayOf(0, 1), intArrayOf(0, 2), intArrayOf(1, 0)), intArrayOf(2, 3))

    @Test
    fun trieStepsAndLeaves() {  // the doctest of edge_gr/ids.py
        assertEquals("0-2", ids.formatId("b"))
        val t = ids.trie
        assertEquals(listOf(true, true), (0 until 2).map { t.allowed(0, 0, it) })
        val n0 = t.step(0, 0, 0)
        assertEquals(listOf(false, true, true), (0 until 3).map { t.allowed(1, n0, it) })
        assertEquals(listOf(0, 1, 2), listOf(intArrayOf(0, 1), intArrayOf(0, 2), intArrayOf(1, 0)).map { t.leaf(it) })
        assertTrue(intArrayOf(1, 0) in t)
        assertFalse(intArrayOf(1, 1) in t)
        assertFalse(intArrayOf(0) in t)
        assertFalse(intArrayOf(0, 5) in t)
        assertEquals(-1, ids.indexOf("zzz"))
    }

    @Test
    fun invalidIdsAreRefused() {
        val cases = listOf(
            { SemanticIds(listOf("a", "b"), arrayOf(intArrayOf(0, 1), intArrayOf(0, 1)), intArrayOf(2, 2)) } to "two items share a semantic ID",
            { SemanticIds(listOf("a", "a"), arrayOf(intArrayOf(0, 1), intArrayOf(0, 0)), intArrayOf(2, 2)) } to "duplicate item ids",
            { SemanticIds(listOf("a"), arrayOf(intArrayOf(0, 2)), intArrayOf(2, 2)) } to "outside its level's range",
            { SemanticIds(listOf("a"), arrayOf(intArrayOf(0)), intArrayOf(2, 2)) } to "codes must have shape")
        for ((make, msg) in cases) {
            try {
                make()
                fail("accepted: $msg")
            } catch (e: FormatError) {
                assertTrue("${e.message}", "${e.message}".contains(msg) && "${e.message}".contains("To fix:"))
            }
        }
    }

    @Test
    fun idsFileFormatIsChecked() {
        val dir = Files.createTempDirectory("ids").toFile()
        try {
            val cases = mapOf(
                """{"format": "edge-gr-semantic-ids", "version": 2, "levels": [2], "items": [], "codes": []}""" to "has format version 2, this edge-gr reads version 1",
                """{"format": "other", "version": 1}""" to "is not an edge-gr-semantic-ids file",
                """{"format": "edge-gr-semantic-ids", "version": 1, "levels": [2], "items": ["a"]}""" to "is malformed (missing field 'codes')",
                """{"format": "edge-gr-semantic-ids", "version": 1, "levels": [2], "items": ["a"], "codes": [["x"]]}""" to "is malformed ('codes' must be an integer, got a string)",
                """{"format": """ to "is not a semantic-ID file (")
            for ((text, msg) in cases) {
                val f = File(dir, "ids.json")
                f.writeText(text)
                try {
                    SemanticIds.load(f)
                    fail("accepted: $text")
                } catch (e: FormatError) {
                    assertTrue("'${e.message}' should contain '$msg'", "${e.message}".contains(msg) && "${e.message}".contains(f.path))
                }
            }
            try {
                SemanticIds.load(File(dir, "missing.json"))
                fail("accepted a missing file")
            } catch (e: FormatError) {
                assertTrue("${e.message}", "${e.message}".startsWith("no semantic-ID file at"))
            }
        } finally {
            dir.deleteRecursively()
        }
    }
}
