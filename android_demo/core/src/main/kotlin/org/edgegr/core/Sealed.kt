package org.edgegr.core

import java.io.File
import java.io.IOException
import javax.crypto.AEADBadTagException
import javax.crypto.Cipher
import javax.crypto.SecretKey
import javax.crypto.spec.GCMParameterSpec
import javax.crypto.spec.SecretKeySpec

/**
 * Encrypted ("sealed") bundle files, read exactly as `edge_gr/sealed.py` writes them: AES-256-GCM with a
 * 256-bit data key named by a key id, a fresh 96-bit nonce per file (the manifest entry's `sealed` record)
 * and associated data `"edge-gr-sealed/1\0" + path in the bundle + "\0" + key id`, so a ciphertext moved to
 * another path fails its tag. The entry's sha256 and size are the ciphertext's: [loadManifest] checks them
 * first; [Sealed.open] then decrypts into memory (no plaintext file).
 */
const val SEALED_ALG = "AES-256-GCM"
private const val LOAD_HINT = "give the engine a KeyProvider holding the data key this bundle was exported with"

/** How a sealed file was encrypted (not secret). */
data class Seal(val alg: String, val keyId: String, val nonce: String)

/**
 * Where the device gets data keys: the AES key for [keyId] or a [MissingKeyError]. A [SecretKey], not bytes,
 * so an Android Keystore key (imported once, never extractable) serves as well as a key held in memory.
 */
interface KeyProvider {
    fun key(keyId: String): SecretKey
}

/** Data keys held in memory (tests; a key the app received over its own channel). */
class RawKeyProvider(private val keys: Map<String, ByteArray>) : KeyProvider {
    override fun key(keyId: String): SecretKey {
        val k = keys[keyId] ?: throw MissingKeyError("the bundle needs data key '$keyId', which the key provider does not have "
            + "(it holds ${keys.keys.sorted()})", hint = LOAD_HINT)
        if (k.size != 32) throw SealedError("data key '$keyId' is not a 256-bit key (got ${k.size} bytes)", hint = LOAD_HINT)
        return SecretKeySpec(k, "AES")
    }
}

object Sealed {
    /** The associated data of a sealed file: its path in the bundle and its key id. */
    fun aad(path: String, keyId: String): ByteArray =
        "edge-gr-sealed/1\u0000".toByteArray(Charsets.UTF_8) + path.toByteArray(Charsets.UTF_8) + byteArrayOf(0) +
            keyId.toByteArray(Charsets.UTF_8)

    /** The plaintext of [entry] (a clear entry: the file's bytes). Verify the bundle first (sha256 of the ciphertext). */
    fun open(root: File, entry: FileEntry, keys: KeyProvider?): ByteArray {
        val data = try { File(root, entry.path).readBytes() } catch (e: IOException) {
            throw BundleError("${entry.path} of the bundle $root cannot be read (${e.message})", hint = "copy the whole bundle again")
        }
        val s = entry.sealed ?: return data
        return decrypt(data, s, entry.path, keys)
    }

    fun decrypt(data: ByteArray, s: Seal, path: String, keys: KeyProvider?): ByteArray {
        if (s.alg != SEALED_ALG)
            throw SealedError("$path is encrypted with '${s.alg}'; this edge-gr opens $SEALED_ALG only", hint = "update the app")
        if (keys == null)
            throw MissingKeyError("$path is encrypted ($SEALED_ALG, data key '${s.keyId}') and no key provider was given", hint = LOAD_HINT)
        val nonce = hex(s.nonce)
        if (nonce == null || nonce.size != 12)
            throw SealedError("$MANIFEST: the nonce of $path is not 12 bytes of hex", hint = "re-export the bundle")
        val cipher = Cipher.getInstance("AES/GCM/NoPadding")
        cipher.init(Cipher.DECRYPT_MODE, keys.key(s.keyId), GCMParameterSpec(128, nonce))
        cipher.updateAAD(aad(path, s.keyId))
        try {
            return cipher.doFinal(data)
        } catch (e: AEADBadTagException) {
            throw SealedError("$path cannot be decrypted with data key '${s.keyId}': wrong key, or the file was altered or moved",
                hint = "check that the key provider holds the key this bundle was exported with; if it does, copy the whole bundle again")
        }
    }

    private fun hex(s: String): ByteArray? {
        if (s.length % 2 != 0) return null
        val out = ByteArray(s.length / 2)
        for (i in out.indices) {
            val hi = Character.digit(s[2 * i], 16)
            val lo = Character.digit(s[2 * i + 1], 16)
            if (hi < 0 || lo < 0) return null
            out[i] = ((hi shl 4) or lo).toByte()
        }
        return out
    }
}
