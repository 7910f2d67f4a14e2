package org.edgegr.demo

import android.app.ActivityManager
import android.content.Context
import android.content.Intent
import android.content.IntentFilter
import android.os.BatteryManager
import android.os.Build
import android.os.PowerManager
import android.os.SystemClock
import org.edgegr.core.DeviceState

/**
 * The [DeviceState] the variant policy needs, read from Android: battery level and charging
 * (`BatteryManager` / the sticky `ACTION_BATTERY_CHANGED` broadcast), thermal status
 * (`PowerManager`, API 29+; "nominal" before), memory the app may still use (`ActivityManager`),
 * and the time of the reading (for dwell times).
 */
object DeviceReadings {
    fun read(context: Context, batteryIntent: Intent? = null): DeviceState {
        val intent = batteryIntent ?: context.registerReceiver(null, IntentFilter(Intent.ACTION_BATTERY_CHANGED))
        val bm = context.getSystemService(Context.BATTERY_SERVICE) as BatteryManager
        var level = -1.0
        if (intent != null) {
            val l = intent.getIntExtra(BatteryManager.EXTRA_LEVEL, -1)
            val scale = intent.getIntExtra(BatteryManager.EXTRA_SCALE, -1)
            if (l >= 0 && scale > 0) level = l.toDouble() / scale
        }
        if (level < 0) {
            val capacity = bm.getIntProperty(BatteryManager.BATTERY_PROPERTY_CAPACITY)  // percent, or MIN_VALUE when unknown
            level = if (capacity in 0..100) capacity / 100.0 else 1.0
        }
        val status = intent?.getIntExtra(BatteryManager.EXTRA_STATUS, -1) ?: -1
        val charging = status == BatteryManager.BATTERY_STATUS_CHARGING || status == BatteryManager.BATTERY_STATUS_FULL || bm.isCharging
        return DeviceState(
            battery = level.coerceIn(0.0, 1.0),
            charging = charging,
            thermal = thermal(context),
            freeMemoryMb = freeMemoryMb(context),
            t = SystemClock.elapsedRealtime() / 1000.0)
    }

    /** PowerManager's thermal status mapped onto the policy's four states. */
    private fun thermal(context: Context): String {
        if (Build.VERSION.SDK_INT < Build.VERSION_CODES.Q) return "nominal"
        val pm = context.getSystemService(Context.POWER_SERVICE) as PowerManager
        return when (pm.currentThermalStatus) {
            PowerManager.THERMAL_STATUS_NONE -> "nominal"
            PowerManager.THERMAL_STATUS_LIGHT -> "fair"
            PowerManager.THERMAL_STATUS_MODERATE, PowerManager.THERMAL_STATUS_SEVERE -> "serious"
            else -> "critical"  // CRITICAL, EMERGENCY, SHUTDOWN
        }
    }

    /**
     * Memory the system can still give before it starts killing apps (available minus its
     * low-memory threshold). The model's buffers are native memory, so the Java heap limit does not apply.
     */
    private fun freeMemoryMb(context: Context): Double {
        val am = context.getSystemService(Context.ACTIVITY_SERVICE) as ActivityManager
        val info = ActivityManager.MemoryInfo()
        am.getMemoryInfo(info)
        return (info.availMem - info.threshold).coerceAtLeast(0L) / 1e6
    }
}
