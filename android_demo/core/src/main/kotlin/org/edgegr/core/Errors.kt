package org.edgegr.core

/**
 * The edge-gr error hierarchy, mirrored from `edge_gr/errors.py`: every error says what went
 * wrong *and what to do about it* (`message`, `hint`), and prints as "MESSAGE. To fix: HINT".
 */
open class EdgeGRError(val msg: String, val hint: String? = null) :
    Exception(if (hint != null) "$msg. To fix: $hint" else msg)

/** A request (history, k, beam, device reading) cannot be served as given. */
open class InputError(msg: String, hint: String? = null) : EdgeGRError(msg, hint)

/** A saved artifact (semantic IDs) has the wrong format or version. */
open class FormatError(msg: String, hint: String? = null) : EdgeGRError(msg, hint)

/** A device bundle is incomplete, corrupted or of an unsupported version. */
open class BundleError(msg: String, hint: String? = null) : FormatError(msg, hint)

/** An encrypted bundle file cannot be opened: wrong key, or the ciphertext was altered (edge_gr.errors.SealedError). */
open class SealedError(msg: String, hint: String? = null) : BundleError(msg, hint)

/** An encrypted bundle file needs a data key the key provider lacks, or none was given (edge_gr.errors.MissingKeyError). */
class MissingKeyError(msg: String, hint: String? = null) : SealedError(msg, hint)

/** An update's signed metadata does not verify or its version is not allowed (edge_gr.trust's TrustError). */
class TrustError(msg: String, hint: String? = null) : BundleError(msg, hint)
