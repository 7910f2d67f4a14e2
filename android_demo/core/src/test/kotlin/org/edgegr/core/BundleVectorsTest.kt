package org.edgegr.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test
import org.junit.runner.RunWith
import org.junit.runners.Parameterized
import java.io.File

/**
 * Bundles corrupted by `make_vectors.py` (truncated/non-JSON/non-UTF-8 manifest, wrong format or
 * version, missing fields, sha256 and size mismatches, missing files, paths outside the bundle):
 * Kotlin refuses each with the same [BundleError] sentence as Python's `load_manifest`
 * (exactly, or up to Python's own parser/exception detail in parentheses), and accepts the intact copy.
 */
@RunWith(Parameterized::class)
class BundleVectorsTest(private val name: String, private val c: Map<String, Any?>) {
    companion object {
        @JvmStatic
        @Parameterized.Parameters(name = "{0}")
        fun cases(): Collection<Array<Any>> = Vectors.json("bundle_cases.json")["cases"].list().map { arrayOf<Any>(it.obj()["name"] as String, it.obj()) }
    }

    @Test
    fun sameVerdictAsPython() {
        val err = c["error"]?.obj()
        val got = try {
            loadManifest(File(c["path"] as String))
            null
        } catch (e: BundleError) {
            e
        }
        if (err == null) {
            if (got != null) fail("$name: Python accepts this bundle, Kotlin says: ${got.message}")
            return
        }
        if (got == null) fail("$name: Python refuses this bundle (${err["text"]}), Kotlin accepts it")
        got!!
        val want = err["message"] as String
        assertEquals("$name: hint", err["hint"], got.hint)
        when (c["compare"]) {
            "exact" -> {
                assertEquals("$name: message", want, got.msg)
                assertEquals("$name: text", err["text"], got.message)
            }
            "prefix" -> {
                val head = want.substring(0, want.indexOf('(') + 1)
                assertTrue("$name: Kotlin's message '${got.msg}' should start like Python's '$want'", head.length > 1 && got.msg.startsWith(head))
                assertTrue("$name: a detail in parentheses", got.msg.endsWith(")"))
            }
            else -> fail("unknown compare mode ${c["compare"]}")
        }
    }
}

/** The intact bundle reads the same in Kotlin as Python wrote it. */
class ManifestTest {
    @Test
    fun readsWhatPythonWrote() {
        val root = File(Vectors.dir, "bundle")
        val doc = Json.parse(File(root, MANIFEST).readText()).obj()
        val m = loadManifest(root)
        assertEquals(doc["model_version"], m.modelVersion)
        assertEquals("rec", m.task)
        assertEquals(doc["runtime"].obj()["levels"].list().map { it.int() }, m.runtime.levels)
        assertEquals(doc["runtime"].obj()["max_len"].int(), m.runtime.maxLen)
        assertEquals(listOf("executorch-fp32", "executorch-int8", "executorch-int4"), m.variants.map { it.name })
        assertEquals(mapOf("fp32" to "executorch-fp32", "int8" to "executorch-int8", "int4" to "executorch-int4"), variantsByPrecision(m, "executorch"))
        assertEquals(32L, m.variant("executorch-int8").static["max_batch"])
        assertEquals(listOf("ids", "catalogue", "popularity"), m.files.keys.toList())
        for (f in m.allFiles()) {
            assertEquals(f.path, File(root, f.path).length(), f.size)
            assertEquals(f.path, sha256(File(root, f.path)), f.sha256)
        }
        try {
            m.variant("onnxruntime-int8")
            fail("an unknown variant must raise")
        } catch (e: BundleError) {
            assertTrue("${e.message}", "${e.message}".contains("pick one of [executorch-fp32, executorch-int8, executorch-int4]"))
        }
    }

    @Test
    fun verifyFalseSkipsTheFileChecks() {
        val broken = File(Vectors.dir, "cases/sha256-mismatch")
        assertEquals("vectors-1", loadManifest(broken, verify = false).modelVersion)
    }
}

/** [RecBundle.open] reads the catalogue (titles with non-ASCII and escapes) and the popularity list as Python wrote them. */
class RecBundleTest {
    @Test
    fun opensTheVectorBundle() {
        val b = RecBundle.open(File(Vectors.dir, "bundle"))
        val want = File(Vectors.dir, "bundle/catalogue.jsonl").readLines().filter { it.isNotBlank() }.map { Json.parse(it).obj() }
        assertEquals(want.map { it["id"] }, b.titles.keys.toList())
        assertEquals(want.map { it["title"] }, b.titles.values.toList())
        assertEquals("東京物語 — \"Tokyo Story\"", b.titles["item-02"])
        assertEquals("tab\tand \\ backslash", b.titles["item-03"])
        assertEquals(Json.parse(File(Vectors.dir, "bundle/popularity.json").readText()), b.recommender.popularity)
        assertEquals(File(Vectors.dir, "bundle/variants/executorch-int4/model.pte"), b.file(b.manifest.variant("executorch-int4"), "program"))
    }

    @Test
    fun refusesACorruptedBundleBeforeReadingIt() {
        try {
            RecBundle.open(File(Vectors.dir, "cases/sha256-mismatch"))
            fail("a corrupted bundle was opened")
        } catch (e: BundleError) {
            assertEquals("catalogue.jsonl does not match its sha256 in the manifest (corrupted)", e.msg)
        }
    }
}
