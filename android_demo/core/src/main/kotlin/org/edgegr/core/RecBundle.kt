package org.edgegr.core

import java.io.File

/**
 * A verified recommendation bundle's non-model parts, as `edge_gr.load` reads them: the manifest
 * (every file's size and sha256 checked first), the semantic IDs, the catalogue titles and the
 * popularity fallback. The model variants are opened by the platform layer (ExecuTorch on Android).
 */
class RecBundle(val root: File, val manifest: BundleManifest, val recommender: Recommender) {
    val ids: SemanticIds get() = recommender.ids
    val titles: Map<String, String> get() = recommender.titles

    /** The file of a variant's role (e.g. "program" of an ExecuTorch variant). */
    fun file(variant: Variant, role: String): File {
        val f = variant.files[role]
            ?: throw BundleError("variant ${variant.name} has no '$role' file", hint = "re-export it, or choose another variant")
        return File(root, f.path)
    }

    companion object {
        fun open(root: File): RecBundle {
            val m = loadManifest(root)
            if (m.task != "rec")
                throw BundleError("$root holds a ${m.task} bundle; this reader takes recommendation (rec) bundles",
                    hint = "export a rec model (a 'next up' list needs a history, not text), or use the Python runtime for text queries")
            for (role in listOf("ids", "catalogue"))
                if (role !in m.files) throw BundleError("$MANIFEST lists no '$role' file", hint = "re-export the bundle with `edge-gr export --checkpoint CKPT --out DIR`")
            val ids = SemanticIds.load(File(root, m.files.getValue("ids").path))
            if (ids.levels.toList() != m.runtime.levels)
                throw BundleError("ids.json has levels ${ids.levels.toList()}, the manifest's runtime says ${m.runtime.levels}",
                    hint = "re-export the bundle with `edge-gr export --checkpoint CKPT --out DIR`")
            val titles = LinkedHashMap<String, String>()
            val cat = m.files.getValue("catalogue").path
            File(root, cat).readLines(Charsets.UTF_8).forEachIndexed { i, line ->
                if (line.isNotBlank()) {
                    try {
                        val rec = Json.parse(line).asObj("line")
                        titles[rec.req("id").asStr("id")] = (rec["title"] as? String) ?: ""
                    } catch (e: Exception) {
                        if (e !is JsonException && e !is JsonTypeError) throw e
                        throw BundleError("$cat line ${i + 1} is not a catalogue record (${e.message})",
                            hint = "re-export the bundle with `edge-gr export --checkpoint CKPT --out DIR`")
                    }
                }
            }
            val popularity = m.files["popularity"]?.let { f ->
                try {
                    Json.parse(File(root, f.path).readText(Charsets.UTF_8)).asList("popularity").map { it.asStr("popularity") }
                } catch (e: Exception) {
                    if (e !is JsonException && e !is JsonTypeError) throw e
                    throw BundleError("${f.path} is not a list of item ids (${e.message})",
                        hint = "re-export the bundle with `edge-gr export --checkpoint CKPT --out DIR`")
                }
            } ?: emptyList()
            return RecBundle(root, m, Recommender(ids, m.runtime.maxLen, popularity, titles))
        }
    }
}
