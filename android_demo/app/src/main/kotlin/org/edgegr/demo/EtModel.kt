package org.edgegr.demo

import org.edgegr.core.BundleError
import org.edgegr.core.Encoded
import org.edgegr.core.Model
import org.edgegr.core.RuntimeSpec
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor
import java.io.Closeable
import java.io.File

/**
 * One ExecuTorch variant of the bundle: a `.pte` with two methods (server/export/executorch.py),
 *
 *  - `encode(src (N, max_len) int64) -> [cross_mask (N, max_len), k_0, v_0, k_1, v_1, ...]`
 *  - `decode(prefix (N, B, L) int64, cross_mask, k_0, v_0, ...) -> logits (N, B, L, V) float32`
 *
 * run through ExecuTorch's Java `Module`. The app runs one query at a time (N = 1); the exported
 * bounds are N <= max_batch and B <= max_beam (manifest `static`). `Module` is not thread-safe:
 * the caller runs every call of one instance on one thread.
 */
class EtModel private constructor(private val module: Module, spec: RuntimeSpec, private val maxBeam: Int?,
                                  override val maxLen: Int? = null) : Model, Closeable {
    private val levels = spec.levels.size
    private val vocab = spec.levels.sum()

    override fun encode(src: LongArray): Encoded {
        val out = module.execute("encode", EValue.from(Tensor.fromBlob(src, longArrayOf(1, src.size.toLong()))))
        if (out.isEmpty()) throw IllegalStateException("ExecuTorch returned no encoder output (was the module destroyed?)")
        return object : Encoded {
            override fun logits(decoderInput: Array<LongArray>, position: Int): Array<FloatArray> {
                val beams = decoderInput.size
                if (maxBeam != null && beams > maxBeam) throw IllegalArgumentException("this variant was exported for at most $maxBeam beams, got $beams")
                val flat = LongArray(beams * levels)
                for (b in 0 until beams) System.arraycopy(decoderInput[b], 0, flat, b * levels, levels)
                val prefix = EValue.from(Tensor.fromBlob(flat, longArrayOf(1, beams.toLong(), levels.toLong())))
                val result = module.execute("decode", prefix, *out)
                if (result.isEmpty()) throw IllegalStateException("ExecuTorch returned no decoder output")
                val logits = result[0].toTensor()
                val shape = logits.shape().toList()
                if (shape != listOf(1L, beams.toLong(), levels.toLong(), vocab.toLong()))
                    throw IllegalStateException("decoder logits have shape $shape, expected [1, $beams, $levels, $vocab]")
                val data = logits.dataAsFloatArray
                return Array(beams) { b ->
                    val start = (b * levels + position) * vocab
                    data.copyOfRange(start, start + vocab)
                }
            }
        }
    }

    override fun close() = module.destroy()

    companion object {
        /**
         * Load `program` and run one tiny query through it (as Python's runtime does), so a broken
         * file fails here, with a [BundleError], and not in the middle of a request.
         */
        fun load(program: File, spec: RuntimeSpec, name: String, maxBeam: Int?, maxLen: Int? = null): EtModel {
            val module = try {
                Module.load(program.absolutePath)
            } catch (e: Exception) {
                throw BundleError("variant $name: ExecuTorch cannot load ${program.name} (${e.message})",
                    hint = "copy the bundle again, or use an executorch-android version matching the exporter")
            }
            for (method in listOf("encode", "decode")) {
                val err = module.loadMethod(method)
                if (err != 0) {
                    module.destroy()
                    throw BundleError("variant $name: ${program.name} has no loadable method '$method' (ExecuTorch error 0x${Integer.toHexString(err)})",
                        hint = "re-export it with `edge-gr export` (methods encode and decode)")
                }
            }
            val model = EtModel(module, spec, maxBeam, maxLen)  // maxLen: the variant's static.max_len (a shorter-history student)
            try {
                val enc = model.encode(LongArray(maxLen ?: spec.maxLen) { 1L })
                enc.logits(arrayOf(LongArray(spec.levels.size)), 0)
            } catch (e: Exception) {
                model.close()
                throw BundleError("variant $name loads but does not run (${e.javaClass.simpleName}: ${e.message})",
                    hint = "re-export it, or choose another variant")
            }
            return model
        }
    }
}
