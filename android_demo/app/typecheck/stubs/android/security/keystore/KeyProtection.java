package android.security.keystore;
public final class KeyProtection implements java.security.KeyStore.ProtectionParameter {
    public static final class Builder {
        public Builder(int purposes) {}
        public Builder setBlockModes(String... blockModes) { return this; }
        public Builder setEncryptionPaddings(String... paddings) { return this; }
        public Builder setRandomizedEncryptionRequired(boolean required) { return this; }
        public KeyProtection build() { return new KeyProtection(); }
    }
}
