package android.app;
public class ActivityManager {
    public static class MemoryInfo {
        public long availMem;
        public long threshold;
        public MemoryInfo() {}
    }
    public void getMemoryInfo(MemoryInfo outInfo) {}
}
