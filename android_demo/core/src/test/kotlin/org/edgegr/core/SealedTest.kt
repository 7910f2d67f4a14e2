package org.edgegr.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test

/** Sealed files as edge_gr/sealed.py writes them (the ciphertext below is Python's, for this key, nonce, path and key id). */
class SealedTest {
    private fun hex(s: String) = ByteArray(s.length / 2) { i -> s.substring(2 * i, 2 * i + 2).toInt(16).toByte() }
    private val key = hex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
    private val seal = Seal(SEALED_ALG, "k1", "000102030405060708090a0b")
    private val path = "variants/executorch-fp32/model.pte"
    private val ct = hex("2266b17ee882b03bfe24f6e7d48d581be6b5f35b82a210de83abbff8000e6804b713fa2658")

    @Test
    fun decryptsWhatPythonSealed() {
        assertEquals("edge-gr sealed vector", String(Sealed.decrypt(ct, seal, path, RawKeyProvider(mapOf("k1" to key))), Charsets.UTF_8))
    }

    @Test
    fun refusesMovedFilesWrongKeysAndMissingKeys() {
        val keys = RawKeyProvider(mapOf("k1" to key))
        try { Sealed.decrypt(ct, seal, "variants/other/model.pte", keys); fail() } catch (e: SealedError) {
            assertTrue(e.msg, e.msg.endsWith("wrong key, or the file was altered or moved"))
        }
        try { Sealed.decrypt(ct, seal, path, RawKeyProvider(mapOf("k1" to ByteArray(32)))); fail() } catch (e: SealedError) {
            assertTrue(e.msg, e.msg.contains("cannot be decrypted with data key 'k1'"))
        }
        try { Sealed.decrypt(ct, seal, path, null); fail() } catch (e: MissingKeyError) {
            assertTrue(e.msg, e.msg.endsWith("no key provider was given"))
        }
        try { Sealed.decrypt(ct, seal, path, RawKeyProvider(emptyMap())); fail() } catch (e: MissingKeyError) {
            assertTrue(e.msg, e.msg.startsWith("the bundle needs data key 'k1'"))
        }
    }

    @Test
    fun manifestEntryCarriesTheSeal() {
        val doc = Json.parse("""{"format": "edge-gr-bundle", "format_version": 1, "model_version": "v1", "task": "rec",
            "runtime": {"task": "rec", "levels": [4], "max_len": 4, "d_model": 8}, "files": {},
            "variants": [{"name": "executorch-fp32", "backend": "executorch", "precision": "fp32", "files": {"program":
              {"path": "$path", "sha256": "00", "size": 37, "sealed": {"alg": "AES-256-GCM", "key_id": "k1", "nonce": "000102030405060708090a0b"}}}}]}""")
        val f = BundleManifest.fromJson(doc).variants[0].files.getValue("program")
        assertEquals(seal, f.sealed)
    }
}
