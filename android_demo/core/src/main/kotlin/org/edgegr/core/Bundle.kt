package org.edgegr.core

import java.io.File
import java.io.FileInputStream
import java.io.IOException
import java.security.MessageDigest

/**
 * The device bundle, read exactly as `edge_gr/bundle.py` reads it: one versioned `manifest.json`
 * (format "edge-gr-bundle", format_version 1) listing every file with its size and sha256.
 * [loadManifest] checks the format name and version and *every* file's size and sha256 before
 * anything is built, so a corrupted or partial bundle is refused as a whole with a [BundleError]
 * naming the file (same sentences as Python's).
 */
const val FORMAT_NAME = "edge-gr-bundle"
const val FORMAT_VERSION = 1
const val MANIFEST = "manifest.json"
private const val REBUILD = "re-export the bundle with `edge-gr export --checkpoint CKPT --out DIR`"
private const val RECOPY = "copy the whole bundle again or $REBUILD"

/** One file of the bundle, relative to its root (sealed: sha256 and size are the ciphertext's, see Sealed.kt). */
data class FileEntry(
    val path: String,   // POSIX path relative to the bundle root
    val sha256: String, // hex digest
    val size: Long,     // bytes
    val sealed: Seal? = null  // null: a clear file
)

/** What the device needs to know about the model to feed and decode it. */
data class RuntimeSpec(
    val task: String,        // "rec" | "retrieval"
    val levels: List<Int>,   // codes per ID level
    val maxLen: Int,         // encoder input length (rec: items, left-padded)
    val dModel: Int,
    val io: String = "enc-kv/dec-full-prefix/v1"
)

/** One runnable model: a backend, a precision and its files (roles "encoder"/"decoder" or "program"). */
data class Variant(
    val name: String,       // e.g. "executorch-int8"
    val backend: String,    // executorch | onnxruntime | litert | torch
    val precision: String,  // fp32 | int8 | int4
    val files: Map<String, FileEntry>,
    val static: Map<String, Any?> = emptyMap(),   // shape limits, e.g. {"max_batch": 32, "max_beam": 64}
    val metrics: Map<String, Any?> = emptyMap()
) {
    val size: Long get() = files.values.fold(0L) { a, f -> a + f.size }
    /** Encoder input length of this variant when it reads less than the bundle's (`static.max_len`: a student's shorter history). */
    val maxLen: Int? get() = (static["max_len"] as? Number)?.toInt()
}

/** The versioned cloud -> device contract. */
data class BundleManifest(
    val modelVersion: String,
    val task: String,
    val runtime: RuntimeSpec,
    val files: Map<String, FileEntry>,   // roles: ids, catalogue, tokenizer (retrieval), popularity (rec)
    val variants: List<Variant>,
    val idScheme: Map<String, Any?> = emptyMap(),
    val meta: Map<String, Any?> = emptyMap()
) {
    fun variant(name: String): Variant =
        variants.firstOrNull { it.name == name }
            ?: throw BundleError("the bundle has no variant '$name'", hint = "pick one of ${variants.map { it.name }}")

    fun allFiles(): List<FileEntry> = files.values.toList() + variants.flatMap { it.files.values }

    companion object {
        /** Read a parsed manifest document; a wrong format, version or shape raises [BundleError]. */
        fun fromJson(doc: Any?): BundleManifest {
            if (doc !is Map<*, *> || doc["format"] != FORMAT_NAME)
                throw BundleError("$MANIFEST is not an $FORMAT_NAME manifest", hint = REBUILD)
            val version = doc["format_version"]
            val versionOk = (version is Long && version == FORMAT_VERSION.toLong()) || (version is Double && version == FORMAT_VERSION.toDouble())
            if (!versionOk)
                throw BundleError("$MANIFEST has format version ${pyRepr(version)}, this edge-gr reads version $FORMAT_VERSION",
                    hint = "$REBUILD with a matching edge-gr version, or update edge-gr on the device")
            try {
                val d = doc.asObj("manifest")
                val rt = d.req("runtime").asObj("runtime")
                val runtime = RuntimeSpec(
                    task = rt.req("task", "runtime.task").asStr("runtime.task"),
                    levels = rt.req("levels", "runtime.levels").asList("runtime.levels").map { it.asInt("runtime.levels") },
                    maxLen = rt.req("max_len", "runtime.max_len").asInt("runtime.max_len"),
                    dModel = rt.req("d_model", "runtime.d_model").asInt("runtime.d_model"),
                    io = if (rt.containsKey("io")) rt["io"].asStr("runtime.io") else "enc-kv/dec-full-prefix/v1")
                val files = entries(d.req("files").asObj("files"), "files")
                val variants = d.req("variants").asList("variants").mapIndexed { i, raw ->
                    val v = raw.asObj("variants[$i]")
                    Variant(name = v.req("name", "variants[$i].name").asStr("variants[$i].name"),
                        backend = v.req("backend", "variants[$i].backend").asStr("variants[$i].backend"),
                        precision = v.req("precision", "variants[$i].precision").asStr("variants[$i].precision"),
                        files = entries(v.req("files", "variants[$i].files").asObj("variants[$i].files"), "variants[$i].files"),
                        static = if (v["static"] == null) emptyMap() else v["static"].asObj("variants[$i].static"),
                        metrics = if (v["metrics"] == null) emptyMap() else v["metrics"].asObj("variants[$i].metrics"))
                }
                return BundleManifest(
                    modelVersion = d.req("model_version").asStr("model_version"),
                    task = d.req("task").asStr("task"),
                    runtime = runtime, files = files, variants = variants,
                    idScheme = if (d["id_scheme"] == null) emptyMap() else d["id_scheme"].asObj("id_scheme"),
                    meta = if (d["meta"] == null) emptyMap() else d["meta"].asObj("meta"))
            } catch (e: JsonTypeError) {
                throw BundleError("$MANIFEST is malformed (${e.message})", hint = REBUILD)
            }
        }

        private fun entries(m: Map<String, Any?>, where: String): Map<String, FileEntry> {
            val out = LinkedHashMap<String, FileEntry>()
            for ((role, raw) in m) {
                val f = raw.asObj("$where.$role")
                out[role] = FileEntry(
                    path = f.req("path", "$where.$role.path").asStr("$where.$role.path"),
                    sha256 = f.req("sha256", "$where.$role.sha256").asStr("$where.$role.sha256"),
                    size = f.req("size", "$where.$role.size").asLong("$where.$role.size"),
                    sealed = if (f["sealed"] == null) null else f["sealed"].asObj("$where.$role.sealed").let { s ->
                        Seal(alg = s.req("alg", "$where.$role.sealed.alg").asStr("$where.$role.sealed.alg"),
                            keyId = s.req("key_id", "$where.$role.sealed.key_id").asStr("$where.$role.sealed.key_id"),
                            nonce = s.req("nonce", "$where.$role.sealed.nonce").asStr("$where.$role.sealed.nonce"))
                    })
            }
            return out
        }
    }
}

/** Python's repr of a JSON scalar, so messages read the same as edge_gr's ("None", "2", "'2'"). */
internal fun pyRepr(v: Any?): String = when (v) {
    null -> "None"
    is String -> "'$v'"
    is Boolean -> if (v) "True" else "False"
    else -> v.toString()
}

/** Hex sha256 of a file, streamed in 1 MiB chunks. */
fun sha256(file: File): String {
    val md = MessageDigest.getInstance("SHA-256")
    FileInputStream(file).use { inp ->
        val buf = ByteArray(1 shl 20)
        while (true) {
            val n = inp.read(buf)
            if (n < 0) break
            md.update(buf, 0, n)
        }
    }
    val sb = StringBuilder()
    for (b in md.digest()) sb.append(String.format("%02x", b.toInt() and 0xff))
    return sb.toString()
}

private fun readManifest(root: File): BundleManifest {
    val mpath = File(root, MANIFEST)
    if (!mpath.isFile) throw BundleError("$root is not an edge-gr bundle (no $MANIFEST)", hint = REBUILD)
    val text = try {
        val bytes = mpath.readBytes()
        val dec = Charsets.UTF_8.newDecoder()  // strict: malformed UTF-8 is an error, as in Python
        dec.decode(java.nio.ByteBuffer.wrap(bytes)).toString()
    } catch (e: java.nio.charset.CharacterCodingException) {
        throw BundleError("$mpath is corrupted (not UTF-8: $e)", hint = REBUILD)
    }
    val doc = try {
        Json.parse(text)
    } catch (e: JsonException) {
        throw BundleError("$mpath is corrupted (${e.message})", hint = REBUILD)
    }
    return BundleManifest.fromJson(doc)
}

private fun verify(root: File, m: BundleManifest) {
    val base = root.canonicalFile
    for (f in m.allFiles()) {
        val p = File(root, f.path).canonicalFile
        var inside = false
        var parent: File? = p.parentFile
        while (parent != null) {
            if (parent == base) { inside = true; break }
            parent = parent.parentFile
        }
        if (!inside) throw BundleError("$MANIFEST lists '${f.path}', which is outside the bundle", hint = REBUILD)
        if (!p.isFile) throw BundleError("${f.path} is missing from the bundle $root", hint = RECOPY)
        if (p.length() != f.size)
            throw BundleError("${f.path} has ${p.length()} bytes, the manifest says ${f.size} (truncated or replaced)", hint = RECOPY)
        val digest = try { sha256(p) } catch (e: IOException) {
            throw BundleError("${f.path} cannot be read (${e.message})", hint = RECOPY)
        }
        if (digest != f.sha256)
            throw BundleError("${f.path} does not match its sha256 in the manifest (corrupted)", hint = RECOPY)
    }
}

/** Read and (by default) fully verify the manifest of a bundle folder. */
fun loadManifest(root: File, verify: Boolean = true): BundleManifest {
    val m = readManifest(root)
    if (verify) verify(root, m)
    return m
}
