//! Token replies: the wire form of a grant, and the last one serialised per
//! connection, kept to answer repeated requests without encoding again.

use super::*;

pub(super) fn token_reply(grant: &Grant) -> TokenReply {
    TokenReply {
        access_token: WireSecret::new(grant.access_token.expose_secret().to_owned()),
        token_type: grant.token_type.clone(),
        expires_at_ms: unix_ms(grant.expires_at),
        scope: grant.scope.clone(),
    }
}

/// A token reply serialised once: `"ok":{…}}`, the response after its
/// `{"id":N,` prefix. Keyed by the grant's allocation, which a `Weak` keeps
/// from being reused, so a renewed token can never be mistaken for it.
pub(super) struct TokenFrame {
    grant: Weak<Grant>,
    tail: Zeroizing<Vec<u8>>,
}

impl TokenFrame {
    /// `None` only if the reply cannot be serialised (then the caller takes
    /// the general path, which reports it).
    pub(super) fn new(grant: &Arc<Grant>) -> Option<TokenFrame> {
        let outcome = Outcome::Ok(Reply::Token(token_reply(grant)));
        let json = Zeroizing::new(serde_json::to_vec(&outcome).ok()?);
        // `{"ok":{…}}` without its opening brace.
        let tail = Zeroizing::new(json.get(1..)?.to_vec());
        (tail.len() + 32 <= frame::MAX_FRAME).then(|| TokenFrame {
            grant: Arc::downgrade(grant),
            tail,
        })
    }

    pub(super) fn is_for(&self, grant: &Arc<Grant>) -> bool {
        std::ptr::eq(self.grant.as_ptr(), Arc::as_ptr(grant))
    }

    /// Appends the frame `{"id":ID,"ok":{…}}`, byte for byte what
    /// `frame::encode` makes of the same response.
    pub(super) fn encode(&self, id: u64, out: &mut Vec<u8>) {
        reserve_wiped(out, frame::HEADER + 32 + self.tail.len());
        let start = out.len();
        out.extend_from_slice(&[0; frame::HEADER]);
        out.extend_from_slice(b"{\"id\":");
        regent_proto::push_decimal(out, id);
        out.push(b',');
        out.extend_from_slice(&self.tail);
        let len = (out.len() - start - frame::HEADER) as u32;
        out[start..start + frame::HEADER].copy_from_slice(&len.to_be_bytes());
    }
}
