package org.edgegr.core

import java.security.KeyFactory
import java.security.MessageDigest
import java.security.PublicKey
import java.security.Signature
import java.security.spec.X509EncodedKeySpec
import java.time.Instant
import java.util.Base64

/**
 * Signed update metadata, verified exactly as `edge_gr/trust.py` verifies it: DSSE envelopes
 * (signature over the PAE encoding of the exact payload bytes) signed with Ed25519, root metadata
 * naming the keys and thresholds of the `root` and `targets` roles, root rotations signed by the
 * previous root and by themselves, releases signed by the targets role with an expiry, a version
 * that must be newer than the installed one unless the release is a rollback order for exactly
 * the installed version. Ed25519 comes from the platform (JDK 15+, Android API 33+).
 *
 * ```
 * val policy = TrustPolicy(Trust.parseRoot(assets.open("root.json").readText()))
 * policy.rotate(packageRoots, now)                       // package/root/N.root.json
 * val rel = policy.checkRelease(File(pkg, "release.json").readText(), installed = "v1.1", now = Instant.now())
 * ```
 */
object Trust {
    const val ROOT_TYPE = "application/vnd.edge-gr.root+json"
    const val RELEASE_TYPE = "application/vnd.edge-gr.release+json"
    const val SPEC = 1L
    private const val HINT = "this package was not signed by the registry this device trusts: ask its publisher, and do not install it"
    private val X509_ED25519_PREFIX = byteArrayOf(0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00)
    private val VERSION = Regex("^v(\\d+)\\.(\\d+)$")

    fun pae(type: String, payload: ByteArray): ByteArray {
        val t = type.toByteArray(Charsets.UTF_8)
        return "DSSEv1 ${t.size} ".toByteArray() + t + " ${payload.size} ".toByteArray() + payload
    }

    fun keyId(raw: ByteArray): String = MessageDigest.getInstance("SHA-256").digest(raw).joinToString("") { "%02x".format(it) }

    private fun publicKey(raw: ByteArray): PublicKey =
        KeyFactory.getInstance("Ed25519").generatePublic(X509EncodedKeySpec(X509_ED25519_PREFIX + raw))

    internal fun version(v: Any?, what: String): Pair<Int, Int> {
        val m = VERSION.matchEntire(v as? String ?: "") ?: throw TrustError("$what has a bad version name $v", HINT)
        return Pair(m.groupValues[1].toInt(), m.groupValues[2].toInt())
    }

    internal fun older(a: Pair<Int, Int>, b: Pair<Int, Int>): Boolean = a.first < b.first || (a.first == b.first && a.second < b.second)

    private class Envelope(val payload: ByteArray, val sigs: List<Pair<String, ByteArray>>)

    private fun envelope(text: String, type: String, what: String): Envelope {
        try {
            val doc = Json.parse(text).asObj(what)
            if (doc["payloadType"] != type) throw TrustError("$what is a '${doc["payloadType"]}' envelope, not $type", HINT)
            val payload = Base64.getDecoder().decode(doc.req("payload").asStr("payload"))
            val sigs = doc.req("signatures").asList("signatures").map {
                val s = it.asObj("signature")
                Pair(s.req("keyid").asStr("keyid"), Base64.getDecoder().decode(s.req("sig").asStr("sig")))
            }
            return Envelope(payload, sigs)
        } catch (e: TrustError) {
            throw e
        } catch (e: Exception) {  // JsonException, JsonTypeError, IllegalArgumentException (base64)
            throw TrustError("$what is not a signed envelope (${e.message})", HINT)
        }
    }

    /** The payload object of an envelope signed by at least [threshold] distinct keys of [keys] (id -> raw key). */
    fun verify(text: String, type: String, keys: Map<String, ByteArray>, threshold: Int, what: String): Map<String, Any?> {
        val env = envelope(text, type, what)
        val good = HashSet<String>()
        val msg = pae(type, env.payload)
        for ((kid, sig) in env.sigs) {
            val raw = keys[kid] ?: continue
            if (kid in good) continue
            val ok = try {
                val v = Signature.getInstance("Ed25519")
                v.initVerify(publicKey(raw))
                v.update(msg)
                v.verify(sig)
            } catch (e: java.security.GeneralSecurityException) {
                false
            }
            if (ok) good.add(kid)
        }
        val need = maxOf(1, threshold)
        if (good.size < need) {
            throw TrustError("$what has ${good.size} valid signature(s) of a trusted key, $need needed " +
                "(forged, altered after signing, or signed by a key this device does not trust)", HINT)
        }
        return try {
            Json.parse(String(env.payload, Charsets.UTF_8)).asObj("payload")
        } catch (e: Exception) {
            throw TrustError("$what is signed but its payload is not a JSON object (${e.message})", HINT)
        }
    }

    internal fun expiry(v: Any?, what: String): Instant = try {
        Instant.parse(v as String)
    } catch (e: Exception) {
        throw TrustError("$what has no valid expiry ($v)", HINT)
    }

    private fun rootFields(p: Map<String, Any?>, env: String, what: String): Root {
        try {
            if (p["_type"] != "root" || p["spec"] != SPEC) throw TrustError("$what is not valid root metadata (type ${p["_type"]})", HINT)
            val version = p.req("version").asLong("version")
            if (version < 1) throw TrustError("$what is not valid root metadata (version $version)", HINT)
            val keys = HashMap<String, ByteArray>()
            for ((kid, k) in p.req("keys").asObj("keys")) {
                val o = k.asObj("key")
                val hex = o.req("public").asStr("public")
                val raw = ByteArray(hex.length / 2) { hex.substring(2 * it, 2 * it + 2).toInt(16).toByte() }
                if (o["keytype"] != "ed25519" || raw.size != 32 || keyId(raw) != kid) throw TrustError("$what is not valid root metadata (key ${kid.take(12)})", HINT)
                keys[kid] = raw
            }
            val roles = HashMap<String, Pair<List<String>, Int>>()
            for (role in listOf("root", "targets")) {
                val r = p.req("roles").asObj("roles").req(role).asObj(role)
                val ids = r.req("keyids").asList("keyids").map { it.asStr("keyid") }
                val t = r.req("threshold").asInt("threshold")
                if (t < 1 || t > ids.size) throw TrustError("$what is not valid root metadata ($role threshold $t)", HINT)
                roles[role] = Pair(ids, t)
            }
            return Root(version, expiry(p["expires"], what), keys, roles, env)
        } catch (e: TrustError) {
            throw e
        } catch (e: Exception) {
            throw TrustError("$what is not valid root metadata (${e.message})", HINT)
        }
    }

    /** A root envelope checked against its own root keys: the device's trust anchor. */
    fun parseRoot(text: String, what: String = "root.json"): Root {
        val unverified = try {
            Json.parse(String(envelope(text, ROOT_TYPE, what).payload, Charsets.UTF_8)).asObj("payload")
        } catch (e: TrustError) {
            throw e
        } catch (e: Exception) {
            throw TrustError("$what is not valid root metadata (payload not a JSON object)", HINT)
        }
        val pre = rootFields(unverified, text, what)
        return rootFields(verify(text, ROOT_TYPE, pre.roleKeys("root"), pre.roles.getValue("root").second, what), text, what)
    }
}

/** Verified root metadata. */
class Root(val version: Long, val expires: Instant, val keys: Map<String, ByteArray>, val roles: Map<String, Pair<List<String>, Int>>,
           val envelope: String) {
    fun roleKeys(role: String): Map<String, ByteArray> = roles.getValue(role).first.filter { it in keys }.associateWith { keys.getValue(it) }

    fun checkExpiry(now: Instant) {
        if (!now.isBefore(expires)) {
            throw TrustError("the trusted root metadata (version $version) expired on $expires",
                "install the app update that ships a newer root.json, or ask the publisher to rotate (`edge-gr keys rotate`) " +
                    "and publish a package that carries it")
        }
    }
}

/** A verified release: the bundle version it installs, the version it is for, whether it is a rollback order. */
data class Release(val version: String, val from: String?, val rollback: Boolean, val updateSha256: String, val manifestSha256: String)

/** What a device trusts now (see `edge_gr.trust.TrustPolicy`). */
class TrustPolicy(var root: Root) {
    /** Adopt the root versions after the trusted one, in order; each must be signed by the previous root and by itself. */
    fun rotate(newer: List<String>, now: Instant) {
        val byVersion = HashMap<Long, String>()
        for (text in newer) {
            val v = try {
                Json.parse(String(Base64.getDecoder().decode(Json.parse(text).asObj("root")["payload"] as String), Charsets.UTF_8))
                    .asObj("payload")["version"] as? Long
            } catch (e: Exception) {
                throw TrustError("root metadata of the package is not a signed envelope (${e.message})",
                    "this package was not signed by the registry this device trusts: ask its publisher, and do not install it")
            }
            if (v != null && v > root.version) byVersion[v] = text
        }
        while (byVersion.containsKey(root.version + 1)) {
            val v = root.version + 1
            val what = "root metadata version $v"
            Trust.verify(byVersion.getValue(v), Trust.ROOT_TYPE, root.roleKeys("root"), root.roles.getValue("root").second,
                "$what (signatures of the previous root's keys)")
            val next = Trust.parseRoot(byVersion.getValue(v), what)
            if (next.version != v) throw TrustError("$what says version ${next.version}")
            root = next
        }
        val top = byVersion.keys.fold(Long.MIN_VALUE) { a, b -> maxOf(a, b) }
        if (top > root.version) {
            throw TrustError("the package's root metadata skips from version ${root.version} to ${byVersion.keys.fold(Long.MAX_VALUE) { a, b -> minOf(a, b) }}",
                "the registry must ship every root version (`edge-gr keys rotate` keeps them)")
        }
        root.checkExpiry(now)
    }

    /** The release of a package, if a device at [installed] may install it; else [TrustError]. */
    fun checkRelease(text: String, installed: String?, now: Instant): Release {
        root.checkExpiry(now)
        val what = "the package's release.json"
        val p = Trust.verify(text, Trust.RELEASE_TYPE, root.roleKeys("targets"), root.roles.getValue("targets").second, what)
        val rel = try {
            if (p["_type"] != "release" || p["spec"] != Trust.SPEC) throw IllegalArgumentException("type ${p["_type"]}")
            val from = p.req("from") as String?
            val rollback = p.req("rollback") as? Boolean ?: throw IllegalArgumentException("rollback not a boolean")
            Release(p.req("version").asStr("version"), from, rollback,
                p.req("update").asObj("update").req("sha256").asStr("sha256"), p.req("manifest").asObj("manifest").req("sha256").asStr("sha256"))
        } catch (e: Exception) {
            throw TrustError("the signed release.json is malformed (${e.message})")
        }
        val v = Trust.version(rel.version, "the signed release")
        if (rel.from != null) Trust.version(rel.from, "the signed release")
        val expires = Trust.expiry(p["expires"], "the signed release.json")
        if (!now.isBefore(expires)) {
            throw TrustError("the signed release of ${rel.version} expired on $expires (replayed or stale metadata)",
                "ask the registry for a fresh package (`edge-gr registry package ... --sign KEYS`)")
        }
        if (rel.rollback) {
            if (installed == null || rel.from != installed) {
                throw TrustError("the signed rollback order to ${rel.version} is for a device at ${rel.from}, this device has $installed")
            }
            if (!Trust.older(v, Trust.version(installed, "the installed bundle"))) {
                throw TrustError("the rollback order goes from $installed to ${rel.version}, which is not older")
            }
            return rel
        }
        if (installed != null) {
            if (!Trust.older(Trust.version(installed, "the installed bundle"), v)) {
                throw TrustError("the signed release ${rel.version} is not newer than the installed $installed (downgrade refused)")
            }
            if (rel.from != null && rel.from != installed) {
                throw TrustError("the signed release ${rel.version} is for a device at ${rel.from}, this device has $installed")
            }
        } else if (rel.from != null) {
            throw TrustError("the signed release ${rel.version} is a delta from ${rel.from}, and this device has no bundle")
        }
        return rel
    }
}
