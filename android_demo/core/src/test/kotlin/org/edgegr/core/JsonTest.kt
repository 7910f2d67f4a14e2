package org.edgegr.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test

class JsonTest {
    @Test
    fun parsesValues() {
        val v = Json.parse(""" {"a": [1, -2, 3.5, 1e3, -0.25E-2, true, false, null], "b": {"c": "x"}, "n": NaN, "i": -Infinity, "p": Infinity} """).obj()
        assertEquals(listOf(1L, -2L, 3.5, 1000.0, -0.0025, true, false, null), v["a"])
        assertEquals(mapOf("c" to "x"), v["b"])
        assertTrue((v["n"] as Double).isNaN())
        assertEquals(Double.NEGATIVE_INFINITY, v["i"])
        assertEquals(Double.POSITIVE_INFINITY, v["p"])
        assertEquals(listOf("a", "b", "n", "i", "p"), v.keys.toList())  // insertion order kept
    }

    @Test
    fun stringsAndEscapes() {
        assertEquals("Amélie \"q\" \\ / \n\t é 東京 😀", Json.parse("\"Amélie \\\"q\\\" \\\\ \\/ \\n\\t \\u00e9 東京 \\ud83d\\ude00\""))
        assertEquals(9007199254740993L, Json.parse("9007199254740993"))  // a long stays exact
        assertEquals(1e30, Json.parse("1000000000000000000000000000000"))  // too big for a Long: a double
    }

    @Test
    fun errorsSayWhereAndWhat() {
        val bad = mapOf(
            "" to "expecting a value: line 1 column 1 (char 0)",
            "{\"a\": 1,\n \"b\" 2}" to "expecting ':' delimiter: line 2 column 6 (char 14)",
            "[1, 2" to "expecting ',' delimiter: line 1 column 6 (char 5)",
            "{\"a\": 1} x" to "extra data after the JSON value: line 1 column 10 (char 9)",
            "\"abc" to "unterminated string: line 1 column 1 (char 0)",
            "{'a': 1}" to "expecting a property name in double quotes: line 1 column 2 (char 1)",
            "01" to "extra data after the JSON value: line 1 column 2 (char 1)",
            "1." to "expecting digits after '.': line 1 column 3 (char 2)",
            "tru" to "expecting a value: line 1 column 1 (char 0)",
            "\"\\x\"" to "invalid \\escape 'x': line 1 column 2 (char 1)",
            "\"a\u0001\"" to "invalid control character in string: line 1 column 3 (char 2)")
        for ((text, msg) in bad) {
            try {
                Json.parse(text)
                fail("accepted invalid JSON: $text")
            } catch (e: JsonException) {
                assertEquals(text, msg, e.message)
            }
        }
    }

    @Test
    fun deepNestingIsAnErrorNotAStackOverflow() {
        try {
            Json.parse("[".repeat(10000))
            fail("accepted")
        } catch (e: JsonException) {
            assertTrue("${e.message}", "${e.message}".startsWith("nested too deeply"))
        }
    }
}
