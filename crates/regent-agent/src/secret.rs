//! Secret strings: redacted in `Debug`, zeroized on drop, exposed only on purpose.

pub use secrecy::{ExposeSecret, SecretString};

/// Wraps a `String` as a [`SecretString`], consuming it so no plain copy stays behind.
pub fn secret(s: String) -> SecretString {
    SecretString::from(s)
}
