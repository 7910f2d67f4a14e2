package android.content;
public abstract class Context {
    public static final String BATTERY_SERVICE = "batterymanager";
    public static final String POWER_SERVICE = "power";
    public static final String ACTIVITY_SERVICE = "activity";
    public abstract Object getSystemService(String name);
    public abstract Intent registerReceiver(BroadcastReceiver receiver, IntentFilter filter);
    public abstract void unregisterReceiver(BroadcastReceiver receiver);
    public abstract Context getApplicationContext();
    public abstract java.io.File getExternalFilesDir(String type);
    public abstract java.io.File getFilesDir();
    public final String getString(int resId) { return null; }
}
