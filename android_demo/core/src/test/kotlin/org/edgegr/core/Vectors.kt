package org.edgegr.core

import java.io.File

/** Where `make_vectors.py` wrote the shared vectors (`-Dedgegr.vectors=DIR`, or `$EDGE_GR_VECTORS`). */
object Vectors {
    val dir: File by lazy {
        val d = System.getProperty("edgegr.vectors") ?: System.getenv("EDGE_GR_VECTORS")
            ?: throw IllegalStateException("no test vectors: run android_demo/core/run_tests.sh (it writes them with make_vectors.py), " +
                "or pass -Dedgegr.vectors=DIR after `python android_demo/make_vectors.py --out DIR`")
        val f = File(d)
        if (!File(f, "search.json").isFile) throw IllegalStateException("$f has no search.json: regenerate it with android_demo/make_vectors.py")
        f
    }

    fun json(name: String): Map<String, Any?> = Json.parse(File(dir, name).readText(Charsets.UTF_8)).asObj(name)
}

@Suppress("UNCHECKED_CAST")
fun Any?.obj(): Map<String, Any?> = this as Map<String, Any?>

@Suppress("UNCHECKED_CAST")
fun Any?.list(): List<Any?> = this as List<Any?>

fun Any?.num(): Double = (this as Number).toDouble()

fun Any?.int(): Int = (this as Number).toInt()

fun Any?.ints(): IntArray = list().map { it.int() }.toIntArray()

/** Scores agree: both NaN, both the same infinity, or within `tol`. */
fun sameScore(a: Double, b: Double, tol: Double = 1e-5): Boolean =
    (a.isNaN() && b.isNaN()) || (a.isInfinite() && a == b) ||
        Math.abs(a - b) <= tol * maxOf(1.0, Math.abs(a), Math.abs(b))  // relative: Python scores are float32 (-1e30 is -1.00000002e30)
