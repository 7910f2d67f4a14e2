package org.edgegr.demo

import android.security.keystore.KeyProperties
import android.security.keystore.KeyProtection
import org.edgegr.core.InputError
import org.edgegr.core.KeyProvider
import org.edgegr.core.MissingKeyError
import java.security.KeyStore
import javax.crypto.SecretKey
import javax.crypto.spec.SecretKeySpec

/**
 * Data keys of encrypted bundles (org.edgegr.core.Sealed) held in the Android Keystore: [import]ed once, when the
 * app is provisioned with a key delivered over its own authenticated channel, and never extractable afterwards;
 * the AES-GCM decryption then runs inside the Keystore (TEE, or StrongBox where the device has one). Decrypt-only:
 * the device never encrypts bundle files. Not run on a device here (type-checked against stubs only).
 */
class KeystoreKeyProvider(private val prefix: String = "edge-gr-data-key:") : KeyProvider {
    private val store: KeyStore = KeyStore.getInstance("AndroidKeyStore").apply { load(null) }

    override fun key(keyId: String): SecretKey {
        val entry = store.getEntry(prefix + keyId, null) as? KeyStore.SecretKeyEntry
            ?: throw MissingKeyError("the bundle needs data key '$keyId', which this device's Keystore does not hold",
                hint = "provision the key with KeystoreKeyProvider.import(\"$keyId\", key)")
        return entry.secretKey
    }

    /** Store [key] (32 bytes) under [keyId] as a decrypt-only AES-GCM Keystore key; the array is zeroed afterwards. */
    fun import(keyId: String, key: ByteArray) {
        try {
            if (key.size != 32) throw InputError("data key '$keyId' is not a 256-bit key (got ${key.size} bytes)",
                hint = "import the 32 bytes of the key file written by edge_gr.sealed.new_key")
            store.setEntry(prefix + keyId, KeyStore.SecretKeyEntry(SecretKeySpec(key, "AES")),
                KeyProtection.Builder(KeyProperties.PURPOSE_DECRYPT)
                    .setBlockModes(KeyProperties.BLOCK_MODE_GCM)
                    .setEncryptionPaddings(KeyProperties.ENCRYPTION_PADDING_NONE)
                    .build())
        } finally {
            key.fill(0)
        }
    }
}
