package android.app;
public class Activity extends android.content.Context {
    protected void onCreate(android.os.Bundle savedInstanceState) {}
    protected void onResume() {}
    protected void onPause() {}
    protected void onDestroy() {}
    public void setContentView(int layoutResID) {}
    public <T extends android.view.View> T findViewById(int id) { return null; }
    public final void runOnUiThread(Runnable action) {}
    public Object getSystemService(String name) { return null; }
    public android.content.Intent registerReceiver(android.content.BroadcastReceiver receiver, android.content.IntentFilter filter) { return null; }
    public void unregisterReceiver(android.content.BroadcastReceiver receiver) {}
    public android.content.Context getApplicationContext() { return null; }
    public java.io.File getExternalFilesDir(String type) { return null; }
    public java.io.File getFilesDir() { return null; }
}
