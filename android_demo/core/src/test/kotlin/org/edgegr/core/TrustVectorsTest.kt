package org.edgegr.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test
import org.junit.runner.RunWith
import org.junit.runners.Parameterized
import java.time.Instant

/**
 * Signed releases written by `make_vectors.py` with Python's `edge_gr.trust` (valid deltas, a tampered payload, a
 * wrong key, expiry, downgrade, replay, rollback orders, root rotation, a fake rotation): Kotlin reaches the same
 * verdict for each, and the same version / root version when it accepts.
 */
@RunWith(Parameterized::class)
class TrustVectorsTest(private val name: String, private val c: Map<String, Any?>) {
    companion object {
        private val doc by lazy { Vectors.json("trust.json") }

        @JvmStatic
        @Parameterized.Parameters(name = "{0}")
        fun cases(): Collection<Array<Any>> = doc["cases"].list().map { arrayOf<Any>(it.obj()["name"] as String, it.obj()) }
    }

    @Test
    fun sameVerdictAsPython() {
        val policy = TrustPolicy(Trust.parseRoot(doc["root"] as String))
        val now = Instant.parse(doc["now"] as String)
        val got = try {
            policy.rotate(c["roots"].list().map { it as String }, now)
            policy.checkRelease(c["release"] as String, c["installed"] as String?, now)
        } catch (e: TrustError) {
            if (c["ok"] == true) fail("$name: Python accepts this release, Kotlin says: ${e.message}")
            assertTrue("$name: the error names the cause like Python's (${c["error"]})", e.msg.isNotEmpty())
            return
        }
        if (c["ok"] != true) fail("$name: Python refuses this release (${c["error"]}), Kotlin accepts it")
        assertEquals("$name: version", c["version"], got.version)
        assertEquals("$name: rollback", c["rollback"], got.rollback)
        assertEquals("$name: root version", (c["root_version"] as Number).toLong(), policy.root.version)
    }
}

/** The trust anchor itself: a root signed by a key it does not name is refused. */
class TrustRootTest {
    @Test
    fun aRootMustBeSelfSigned() {
        val doc = Vectors.json("trust.json")
        val fake = doc["cases"].list().map { it.obj() }.first { it["name"] == "fake-rotation" }["roots"].list()[0] as String
        Trust.parseRoot(fake)  // self-signed by the attacker: well-formed on its own
        try {
            TrustPolicy(Trust.parseRoot(doc["root"] as String)).rotate(listOf(fake), Instant.parse(doc["now"] as String))
            fail("a rotation not signed by the previous root was adopted")
        } catch (e: TrustError) {
            assertTrue(e.msg, e.msg.contains("previous root"))
        }
    }
}
