package org.pytorch.executorch;
public class Module {
    public static Module load(final String modelPath) { return null; }
    public EValue[] execute(String methodName, EValue... inputs) { return null; }
    public int loadMethod(String methodName) { return 0; }
    public void destroy() {}
}
