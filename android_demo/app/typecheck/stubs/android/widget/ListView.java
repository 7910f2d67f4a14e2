package android.widget;
public class ListView extends AdapterView<ListAdapter> {
    @Override public ListAdapter getAdapter() { return null; }
    @Override public void setAdapter(ListAdapter adapter) {}
}
