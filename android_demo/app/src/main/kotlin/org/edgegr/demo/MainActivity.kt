package org.edgegr.demo

import android.app.Activity
import android.content.BroadcastReceiver
import android.content.Context
import android.content.Intent
import android.content.IntentFilter
import android.os.Bundle
import android.text.Editable
import android.text.TextWatcher
import android.widget.ArrayAdapter
import android.widget.Button
import android.widget.EditText
import android.widget.ListView
import android.widget.TextView
import org.edgegr.core.DeviceState
import org.edgegr.core.EdgeGRError
import java.io.File
import java.util.Locale
import java.util.concurrent.ExecutorService
import java.util.concurrent.Executors

/**
 * One screen: a search box over the catalogue and the "next up" list of a demo user.
 *
 * Tapping a title (a search match or a recommendation) "watches" it: it joins the demo user's
 * history and the next-up list is recomputed on the device with the bundle's model. The status
 * line shows the variant in use and why (battery policy), the battery reading, and the latency
 * of the last query (and whether the prediction cache answered). All model work runs on one
 * background thread ([worker]); the UI thread only draws.
 */
class MainActivity : Activity() {
    private lateinit var status: TextView
    private lateinit var historyView: TextView
    private lateinit var search: EditText
    private lateinit var matchesAdapter: ArrayAdapter<String>
    private lateinit var nextUpAdapter: ArrayAdapter<String>

    private val worker: ExecutorService = Executors.newSingleThreadExecutor()
    @Volatile private var engine: EdgeGrEngine? = null
    @Volatile private var lastState: DeviceState? = null
    @Volatile private var lastAnswer: EdgeGrEngine.Answer? = null

    // UI-thread state
    private val history = ArrayList<String>()
    private var initialHistory: List<String> = emptyList()
    private var matchIds: List<String> = emptyList()
    private var nextUpIds: List<String> = emptyList()

    private val batteryReceiver = object : BroadcastReceiver() {
        override fun onReceive(context: Context, intent: Intent) {
            val e = engine ?: return
            worker.execute {
                val state = DeviceReadings.read(applicationContext, intent)
                val before = e.variant
                val now = e.update(state)
                lastState = state
                runOnUiThread { if (now != before) recompute() else showStatus() }
            }
        }
    }

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        status = findViewById(R.id.status)
        historyView = findViewById(R.id.history)
        search = findViewById(R.id.search)
        matchesAdapter = ArrayAdapter(this, android.R.layout.simple_list_item_1, ArrayList())
        nextUpAdapter = ArrayAdapter(this, android.R.layout.simple_list_item_1, ArrayList())
        val matches = findViewById<ListView>(R.id.matches)
        val nextUp = findViewById<ListView>(R.id.next_up)
        matches.adapter = matchesAdapter
        nextUp.adapter = nextUpAdapter
        matches.setOnItemClickListener { _, _, pos, _ -> watch(matchIds[pos]) }
        nextUp.setOnItemClickListener { _, _, pos, _ -> watch(nextUpIds[pos]) }
        findViewById<Button>(R.id.reset).setOnClickListener {
            history.clear()
            history.addAll(initialHistory)
            recompute()
        }
        search.addTextChangedListener(object : TextWatcher {
            override fun afterTextChanged(s: Editable) = showMatches(s.toString())
            override fun beforeTextChanged(s: CharSequence, start: Int, count: Int, after: Int) {}
            override fun onTextChanged(s: CharSequence, start: Int, before: Int, count: Int) {}
        })
        worker.execute { openBundle() }
    }

    override fun onResume() {
        super.onResume()
        registerReceiver(batteryReceiver, IntentFilter(Intent.ACTION_BATTERY_CHANGED))
    }

    override fun onPause() {
        unregisterReceiver(batteryReceiver)
        super.onPause()
    }

    override fun onDestroy() {
        worker.execute { engine?.close() }
        worker.shutdown()
        super.onDestroy()
    }

    /** Where `adb push` puts the bundle (see README.md), else the app's internal files folder. */
    private fun bundleDir(): File {
        val external = getExternalFilesDir(null)?.let { File(it, BUNDLE_DIR) }
        return if (external != null && external.isDirectory) external else File(filesDir, BUNDLE_DIR)
    }

    // -- worker thread ----------------------------------------------------------------------------
    /** Verify and open the bundle, pick the first variant from a device reading, show the first list. */
    private fun openBundle() {
        val dir = bundleDir()
        try {
            val e = EdgeGrEngine.open(dir)
            val state = DeviceReadings.read(applicationContext)
            e.update(state)
            engine = e
            lastState = state
            val start = e.bundle.recommender.popularity.take(3).ifEmpty { e.bundle.ids.items.take(3) }
            runOnUiThread {
                initialHistory = start
                history.clear()
                history.addAll(start)
                showMatches(search.text.toString())
                recompute()
            }
        } catch (e: EdgeGRError) {
            runOnUiThread { status.text = getString(R.string.app_name) + ": " + e.message + "\n\n" + pushHint(dir) }
        } catch (e: Exception) {
            runOnUiThread { status.text = "${e.javaClass.simpleName}: ${e.message}\n\n" + pushHint(dir) }
        }
    }

    /** Recompute the next-up list for the current history (UI thread: it reads [history]). */
    private fun recompute() {
        val h = ArrayList(history)
        worker.execute {
            val e = engine ?: return@execute
            val answer = try {
                e.nextUp(h, k = 10)
            } catch (x: Exception) {
                runOnUiThread { status.text = "query failed: ${x.javaClass.simpleName}: ${x.message}" }
                return@execute
            }
            lastAnswer = answer
            runOnUiThread {
                nextUpIds = answer.hits.map { it.itemId }
                nextUpAdapter.clear()
                nextUpAdapter.addAll(answer.hits.mapIndexed { i, hit ->
                    val score = if (hit.score.isNaN()) "popular" else String.format(Locale.US, "%.2f", hit.score)
                    "${i + 1}. ${hit.title.ifEmpty { hit.itemId }}   ($score)"
                })
                showHistory()
                showStatus()
            }
        }
    }

    // -- UI thread ---------------------------------------------------------------------------------
    private fun watch(item: String) {
        history.add(item)
        recompute()
    }

    private fun showMatches(text: String) {
        val e = engine ?: return
        val found = e.findTitles(text)
        matchIds = found.map { it.first }
        matchesAdapter.clear()
        matchesAdapter.addAll(found.map { it.second.ifEmpty { it.first } })
    }

    private fun showHistory() {
        val e = engine ?: return
        historyView.text = "Watched: " + history.takeLast(5).joinToString(" · ") { e.bundle.titles[it]?.ifEmpty { null } ?: it } +
            if (history.size > 5) " (+${history.size - 5} earlier)" else ""
    }

    private fun showStatus() {
        val e = engine ?: return
        val s = lastState
        val a = lastAnswer
        val lines = ArrayList<String>()
        lines.add("bundle ${e.bundle.manifest.modelVersion} · variant ${e.variant}" +
            (e.decision?.reasons?.let { " (" + it.joinToString("; ") + ")" } ?: ""))
        if (s != null) lines.add("battery ${Math.round(s.battery * 100)}%" + (if (s.charging) ", charging" else "") +
            " · thermal ${s.thermal} · free ${Math.round(s.freeMemoryMb)} MB")
        if (a != null) lines.add(String.format(Locale.US, "last query: %.1f ms on %s%s · cache %d hits / %d misses",
            a.latencyMs, a.variant, if (a.cached) " (from the cache)" else "", e.cache.hits, e.cache.misses))
        if (e.errors.isNotEmpty()) lines.add("last failed switch: " + e.errors.last())
        status.text = lines.joinToString("\n")
    }

    private fun pushHint(dir: File) =
        "Push a bundle exported with `edge-gr export` (rec task, executorch variants):\n" +
            "adb push bundle/. ${dir.absolutePath}/\nthen restart the app."

    companion object {
        const val BUNDLE_DIR = "bundle"
    }
}
