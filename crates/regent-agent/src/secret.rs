//! Secret strings: redacted in `Debug`, zeroized on drop, exposed only on purpose.

pub use secrecy::{ExposeSecret, SecretString};

/// Wraps a `String` as a [`SecretString`], consuming it so no plain copy stays behind.
pub fn secret(s: String) -> SecretString {
    SecretString::from(s)
}

/// How logs name an identifier that must not appear in them (a slot
/// identifier, the device id, an auth-token id): the first 8 hex digits of
/// its SHA-256. Enough to tell values apart and to match a known one
/// (`printf %s ID | sha256sum | cut -c1-8`), useless for replaying it.
pub fn short_hash(value: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(value.as_bytes());
    digest.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// A stable, non-reversible 64-bit fingerprint of a high-entropy value (a
/// token): the first 8 bytes of its SHA-256, big-endian. Persisted (the
/// OAuth2 token ledger), so it must not change between builds, unlike
/// `std`'s `DefaultHasher`.
pub fn fingerprint(value: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(value.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

#[cfg(test)]
mod tests {
    #[test]
    fn fingerprints_are_the_sha256_prefix() {
        // printf %s abc | sha256sum | cut -c1-16
        assert_eq!(super::fingerprint("abc"), 0xba78_16bf_8f01_cfea);
    }

    #[test]
    fn short_hashes_are_the_sha256_prefix() {
        // printf %s dev-1-0 | sha256sum | cut -c1-8
        assert_eq!(super::short_hash("dev-1-0"), "10680c0a");
        assert_ne!(super::short_hash("dev-1-0"), super::short_hash("dev-1-1"));
    }
}
