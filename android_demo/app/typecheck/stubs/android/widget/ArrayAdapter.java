package android.widget;
public class ArrayAdapter<T> implements ListAdapter {
    public ArrayAdapter(android.content.Context context, int resource, java.util.List<T> objects) {}
    public void clear() {}
    public void addAll(java.util.Collection<? extends T> collection) {}
}
