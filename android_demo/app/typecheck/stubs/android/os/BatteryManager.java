package android.os;
public class BatteryManager {
    public static final String EXTRA_LEVEL = "level";
    public static final String EXTRA_SCALE = "scale";
    public static final String EXTRA_STATUS = "status";
    public static final int BATTERY_STATUS_CHARGING = 2;
    public static final int BATTERY_STATUS_FULL = 5;
    public static final int BATTERY_PROPERTY_CAPACITY = 4;
    public int getIntProperty(int id) { return 0; }
    public boolean isCharging() { return false; }
}
