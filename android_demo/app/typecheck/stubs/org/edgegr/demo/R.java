package org.edgegr.demo;
/** What aapt generates from res/ (the ids the app uses). */
public final class R {
    public static final class layout { public static final int activity_main = 1; }
    public static final class id {
        public static final int status = 10, history = 11, reset = 12, search = 13, matches = 14, next_up = 15;
    }
    public static final class string {
        public static final int app_name = 20, search_hint = 21, next_up = 22, reset = 23, loading = 24;
    }
}
