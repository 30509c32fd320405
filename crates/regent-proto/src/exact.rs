//! The two frames of a cached handout — a `token` request and its token
//! reply — read and written in the exact form regent's own clients and agent
//! send, without serde.
//!
//! A handout is one request and one reply; on a persistent connection their
//! JSON was the largest user-space cost on both sides (decoding a request
//! ~1,500 instructions in the agent, encoding it ~950 and decoding the reply
//! ~3,900 in the client; callgrind, December 2026). The readers here accept
//! only the byte layout serde_json itself writes for these messages — fields
//! in declaration order, no whitespace, numbers without sign, fraction or
//! leading zero, strings of printable ASCII without escapes — and answer
//! `None` for anything else, which then takes the general serde path (and
//! gets its error messages). So they never accept what serde would refuse,
//! and decode everything they accept as serde would; `message`'s tests check
//! both against serde.

/// A reader over one frame's payload.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes, at: 0 }
    }

    /// Consumes `literal` if the input continues with it.
    fn literal(&mut self, literal: &[u8]) -> Option<()> {
        let rest = self.bytes.get(self.at..)?;
        rest.starts_with(literal).then(|| self.at += literal.len())
    }

    /// A JSON number that is a `u64`: digits only, no leading zero.
    fn number(&mut self) -> Option<u64> {
        let rest = self.bytes.get(self.at..)?;
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || (digits > 1 && rest[0] == b'0') {
            return None;
        }
        let mut value: u64 = 0;
        for &digit in &rest[..digits] {
            value = value
                .checked_mul(10)?
                .checked_add(u64::from(digit - b'0'))?;
        }
        self.at += digits;
        Some(value)
    }

    /// A JSON string of printable ASCII without escapes, quotes included.
    fn plain_string(&mut self) -> Option<&'a str> {
        self.literal(b"\"")?;
        let rest = self.bytes.get(self.at..)?;
        let len = memchr::memchr(b'"', rest)?;
        let text = &rest[..len];
        // Printable ASCII is 0x20..0x7f. No early exit, so that the check
        // compiles to vector instructions (a token is most of a reply's bytes).
        let plain = text.iter().fold(true, |plain, &b| {
            plain & (b.wrapping_sub(0x20) < 0x5f) & (b != b'\\')
        });
        if !plain {
            return None;
        }
        self.at += len + 1;
        // Printable ASCII is UTF-8.
        std::str::from_utf8(text).ok()
    }

    fn end(&self) -> Option<()> {
        (self.at == self.bytes.len()).then_some(())
    }
}

/// `{"id":ID,"op":"token","min_valid":SECS}`: the request `(id, min_valid)`.
pub(crate) fn read_token_request(payload: &[u8]) -> Option<(u64, u64)> {
    let mut c = Cursor::new(payload);
    c.literal(br#"{"id":"#)?;
    let id = c.number()?;
    c.literal(br#","op":"token","min_valid":"#)?;
    let min_valid = c.number()?;
    c.literal(b"}")?;
    c.end()?;
    Some((id, min_valid))
}

/// The fields of a token reply, borrowed from the frame.
pub(crate) struct TokenReplyView<'a> {
    pub(crate) id: u64,
    pub(crate) access_token: &'a str,
    pub(crate) token_type: &'a str,
    pub(crate) expires_at_ms: u64,
    pub(crate) scope: Option<&'a str>,
}

/// `{"id":ID,"ok":{"kind":"token","access_token":"…","token_type":"…",
/// "expires_at_ms":MS}}`, with `,"scope":"…"` before the last two braces
/// when the reply has a scope.
pub(crate) fn read_token_reply(payload: &[u8]) -> Option<TokenReplyView<'_>> {
    let mut c = Cursor::new(payload);
    c.literal(br#"{"id":"#)?;
    let id = c.number()?;
    c.literal(br#","ok":{"kind":"token","access_token":"#)?;
    let access_token = c.plain_string()?;
    c.literal(br#","token_type":"#)?;
    let token_type = c.plain_string()?;
    c.literal(br#","expires_at_ms":"#)?;
    let expires_at_ms = c.number()?;
    let scope = match c.literal(br#","scope":"#) {
        Some(()) => Some(c.plain_string()?),
        None => None,
    };
    c.literal(b"}}")?;
    c.end()?;
    Some(TokenReplyView {
        id,
        access_token,
        token_type,
        expires_at_ms,
        scope,
    })
}

/// Appends the payload of a `token` request with no scope, byte for byte
/// what serde_json writes for it.
pub(crate) fn write_token_request(id: u64, min_valid: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(br#"{"id":"#);
    push_decimal(out, id);
    out.extend_from_slice(br#","op":"token","min_valid":"#);
    push_decimal(out, min_valid);
    out.push(b'}');
}

/// Appends `n` in decimal.
pub fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}
