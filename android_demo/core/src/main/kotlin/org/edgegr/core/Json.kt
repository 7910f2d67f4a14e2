package org.edgegr.core

/**
 * A small, strict JSON reader (RFC 8259 plus the `NaN`, `Infinity`, `-Infinity` tokens that
 * Python's `json.dumps` writes by default).
 *
 * Why our own: the core must build with nothing but Debian's `kotlin` 1.3 package, offline
 * (no dependency may be fetched at build time on the machines that test it), and Kotlin's
 * stdlib has no JSON. Android's `org.json` is not on the JVM here either. Bundle manifests
 * and ID files are small, so a recursive-descent parser is plenty.
 *
 * Values: objects -> `Map<String, Any?>` (insertion order kept), arrays -> `List<Any?>`,
 * strings -> `String`, integers without fraction/exponent -> `Long`, other numbers -> `Double`,
 * `true`/`false` -> `Boolean`, `null` -> `null`.
 */
class JsonException(message: String) : Exception(message)

object Json {
    /** Parse one JSON document; trailing non-space text is an error. */
    fun parse(text: String): Any? {
        val p = Parser(text)
        p.skipSpace()
        val v = p.value(0)
        p.skipSpace()
        if (p.pos < text.length) throw p.error("extra data after the JSON value")
        return v
    }

    private const val MAX_DEPTH = 512

    private class Parser(val s: String) {
        var pos = 0

        fun error(what: String): JsonException {
            var line = 1
            var col = 1
            for (i in 0 until minOf(pos, s.length)) {
                if (s[i] == '\n') { line++; col = 1 } else col++
            }
            return JsonException("$what: line $line column $col (char $pos)")
        }

        fun skipSpace() {
            while (pos < s.length && (s[pos] == ' ' || s[pos] == '\t' || s[pos] == '\n' || s[pos] == '\r')) pos++
        }

        fun value(depth: Int): Any? {
            if (depth > MAX_DEPTH) throw error("nested too deeply")
            if (pos >= s.length) throw error("expecting a value")
            val c = s[pos]
            return when {
                c == '{' -> obj(depth)
                c == '[' -> arr(depth)
                c == '"' -> str()
                c == '-' || c in '0'..'9' -> num()
                s.startsWith("true", pos) -> { pos += 4; true }
                s.startsWith("false", pos) -> { pos += 5; false }
                s.startsWith("null", pos) -> { pos += 4; null }
                s.startsWith("NaN", pos) -> { pos += 3; Double.NaN }
                s.startsWith("Infinity", pos) -> { pos += 8; Double.POSITIVE_INFINITY }
                else -> throw error("expecting a value")
            }
        }

        fun obj(depth: Int): Map<String, Any?> {
            val out = LinkedHashMap<String, Any?>()
            pos++ // {
            skipSpace()
            if (pos < s.length && s[pos] == '}') { pos++; return out }
            while (true) {
                skipSpace()
                if (pos >= s.length || s[pos] != '"') throw error("expecting a property name in double quotes")
                val key = str()
                skipSpace()
                if (pos >= s.length || s[pos] != ':') throw error("expecting ':' delimiter")
                pos++
                skipSpace()
                out[key] = value(depth + 1)
                skipSpace()
                if (pos >= s.length) throw error("expecting ',' delimiter")
                when (s[pos]) {
                    ',' -> pos++
                    '}' -> { pos++; return out }
                    else -> throw error("expecting ',' delimiter")
                }
            }
        }

        fun arr(depth: Int): List<Any?> {
            val out = ArrayList<Any?>()
            pos++ // [
            skipSpace()
            if (pos < s.length && s[pos] == ']') { pos++; return out }
            while (true) {
                skipSpace()
                out.add(value(depth + 1))
                skipSpace()
                if (pos >= s.length) throw error("expecting ',' delimiter")
                when (s[pos]) {
                    ',' -> pos++
                    ']' -> { pos++; return out }
                    else -> throw error("expecting ',' delimiter")
                }
            }
        }

        fun str(): String {
            val start = pos
            pos++ // opening quote
            val sb = StringBuilder()
            while (true) {
                if (pos >= s.length) { pos = start; throw error("unterminated string") }
                val c = s[pos]
                when {
                    c == '"' -> { pos++; return sb.toString() }
                    c == '\\' -> {
                        if (pos + 1 >= s.length) { pos = start; throw error("unterminated string") }
                        when (val e = s[pos + 1]) {
                            '"' -> sb.append('"')
                            '\\' -> sb.append('\\')
                            '/' -> sb.append('/')
                            'b' -> sb.append('\b')
                            'f' -> sb.append('\u000C')
                            'n' -> sb.append('\n')
                            'r' -> sb.append('\r')
                            't' -> sb.append('\t')
                            'u' -> {
                                if (pos + 6 > s.length) throw error("invalid \\uXXXX escape")
                                val hex = s.substring(pos + 2, pos + 6)
                                val code = try { Integer.parseInt(hex, 16) } catch (x: NumberFormatException) { throw error("invalid \\uXXXX escape") }
                                sb.append(code.toChar())
                                pos += 4
                            }
                            else -> throw error("invalid \\escape '$e'")
                        }
                        pos += 2
                    }
                    c < ' ' -> throw error("invalid control character in string")
                    else -> { sb.append(c); pos++ }
                }
            }
        }

        fun num(): Any {
            val start = pos
            if (s[pos] == '-') {
                pos++
                if (s.startsWith("Infinity", pos)) { pos += 8; return Double.NEGATIVE_INFINITY }
            }
            if (pos >= s.length || s[pos] !in '0'..'9') throw error("expecting a value")
            if (s[pos] == '0') pos++ else while (pos < s.length && s[pos] in '0'..'9') pos++
            var integral = true
            if (pos < s.length && s[pos] == '.') {
                integral = false
                pos++
                if (pos >= s.length || s[pos] !in '0'..'9') throw error("expecting digits after '.'")
                while (pos < s.length && s[pos] in '0'..'9') pos++
            }
            if (pos < s.length && (s[pos] == 'e' || s[pos] == 'E')) {
                integral = false
                pos++
                if (pos < s.length && (s[pos] == '+' || s[pos] == '-')) pos++
                if (pos >= s.length || s[pos] !in '0'..'9') throw error("expecting digits in the exponent")
                while (pos < s.length && s[pos] in '0'..'9') pos++
            }
            val t = s.substring(start, pos)
            if (integral) {
                try { return t.toLong() } catch (x: NumberFormatException) { /* too large for a Long */ }
            }
            return t.toDouble()
        }
    }
}

// -- typed access, used by the format readers (each throws JsonTypeError naming the field) ------

/** A JSON value had the wrong type or a required field was missing; `field` names it. */
class JsonTypeError(val field: String, message: String) : Exception(message)

@Suppress("UNCHECKED_CAST")
internal fun Any?.asObj(field: String): Map<String, Any?> =
    this as? Map<String, Any?> ?: throw JsonTypeError(field, "'$field' must be an object, got ${jsonType(this)}")

internal fun Any?.asList(field: String): List<Any?> =
    this as? List<Any?> ?: throw JsonTypeError(field, "'$field' must be a list, got ${jsonType(this)}")

internal fun Any?.asStr(field: String): String =
    this as? String ?: throw JsonTypeError(field, "'$field' must be a string, got ${jsonType(this)}")

internal fun Any?.asLong(field: String): Long = when (this) {
    is Long -> this
    is Double -> if (this == Math.floor(this) && !this.isInfinite()) this.toLong() else throw JsonTypeError(field, "'$field' must be an integer, got $this")
    else -> throw JsonTypeError(field, "'$field' must be an integer, got ${jsonType(this)}")
}

internal fun Any?.asInt(field: String): Int {
    val v = asLong(field)
    if (v < Int.MIN_VALUE || v > Int.MAX_VALUE) throw JsonTypeError(field, "'$field' is out of range: $v")
    return v.toInt()
}

internal fun Any?.asDouble(field: String): Double = when (this) {
    is Long -> this.toDouble()
    is Double -> this
    else -> throw JsonTypeError(field, "'$field' must be a number, got ${jsonType(this)}")
}

internal fun Map<String, Any?>.req(key: String, field: String = key): Any? {
    if (!containsKey(key)) throw JsonTypeError(field, "missing field '$field'")
    return get(key)
}

internal fun jsonType(v: Any?): String = when (v) {
    null -> "null"
    is Map<*, *> -> "an object"
    is List<*> -> "a list"
    is String -> "a string"
    is Boolean -> "a boolean"
    is Long, is Double -> "a number"
    else -> v.javaClass.simpleName
}
