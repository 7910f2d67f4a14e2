package android.widget;
public abstract class AdapterView<T> extends android.view.View {
    public interface OnItemClickListener { void onItemClick(AdapterView<?> parent, android.view.View view, int position, long id); }
    public void setOnItemClickListener(OnItemClickListener listener) {}
    public abstract T getAdapter();
    public abstract void setAdapter(T adapter);
}
