//! Micro-benchmarks of the handout hot path, for profiling (divan):
//! `cargo bench -p regent-bench`.
//!
//! - the frame codec: "is a whole frame buffered?", encoding a token reply;
//! - request decoding: the `token` fast path and the general path (`hello`);
//! - the token engine's cached handout (`Engine::token`), polled once with a
//!   no-op waker so that no runtime scheduling is measured.
#![allow(clippy::expect_used)] // A benchmark whose setup fails has nothing to measure.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use divan::black_box;
use regent_agent::engine::{BoxFuture, Engine, EngineSettings, Renewer};
use regent_agent::grant::Grant;
use regent_agent::secret::secret;
use regent_proto::frame;
use regent_proto::message::{self, Op, Outcome, Reply, Request, Response, TokenReply, WireSecret};

fn main() {
    divan::main();
}

/// A realistic access token: a JWT-sized opaque string.
fn token_value() -> String {
    "eyJhbGciOiJSUzI1NiJ9.".to_owned() + &"x".repeat(120)
}

fn request_frame(op: Op) -> Vec<u8> {
    let mut out = Vec::new();
    frame::encode(&Request { id: 42, op }, &mut out).expect("a small request always encodes");
    out
}

#[divan::bench]
fn frame_len_of_a_token_request(bencher: divan::Bencher<'_, '_>) {
    let buf = request_frame(Op::Token {
        min_valid: 60,
        scope: None,
    });
    bencher.bench_local(|| frame::frame_len(black_box(&buf)));
}

#[divan::bench]
fn decode_token_request(bencher: divan::Bencher<'_, '_>) {
    let buf = request_frame(Op::Token {
        min_valid: 60,
        scope: None,
    });
    let payload = &buf[frame::HEADER..];
    bencher.bench_local(|| message::decode_request(black_box(payload)));
}

#[divan::bench]
fn decode_hello_request(bencher: divan::Bencher<'_, '_>) {
    let buf = request_frame(Op::Hello {
        versions: vec![1],
        app: "editor".into(),
        instance: None,
    });
    let payload = &buf[frame::HEADER..];
    bencher.bench_local(|| message::decode_request(black_box(payload)));
}

#[divan::bench]
fn encode_token_reply(bencher: divan::Bencher<'_, '_>) {
    let response = Response {
        id: 42,
        outcome: Outcome::Ok(Reply::Token(TokenReply {
            access_token: WireSecret::new(token_value()),
            token_type: "Bearer".into(),
            expires_at_ms: 1_790_000_000_000,
            scope: None,
        })),
    };
    let mut out = Vec::with_capacity(512);
    bencher.bench_local(|| {
        out.clear();
        frame::encode(black_box(&response), &mut out)
    });
}

struct NeverCalled;

impl Renewer for NeverCalled {
    fn renew(&self) -> BoxFuture<'_, regent_agent::Result<Grant>> {
        Box::pin(async {
            Err(regent_agent::Error::new(
                regent_agent::ErrorCode::Internal,
                "the benchmark's token never needs renewing",
            ))
        })
    }
}

#[divan::bench]
fn engine_cached_handout(bencher: divan::Bencher<'_, '_>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds on any supported platform");
    let _entered = rt.enter();
    let engine = Engine::start(EngineSettings::default());
    let now = SystemTime::now();
    let grant = Grant {
        access_token: secret(token_value()),
        token_type: "Bearer".into(),
        received_at: now,
        expires_at: now + Duration::from_secs(3600),
        refresh_token: None,
        refresh_expires_at: None,
        scope: None,
    };
    rt.block_on(engine.activate(Arc::new(NeverCalled), Some(grant)));
    let min_valid = Duration::from_secs(60);
    bencher.bench_local(|| {
        let mut handout = pin!(engine.token(black_box(min_valid)));
        let mut cx = Context::from_waker(Waker::noop());
        match handout.as_mut().poll(&mut cx) {
            Poll::Ready(result) => result.is_ok(),
            // Only a renewal waits, and an hour-long token needs none.
            Poll::Pending => rt.block_on(handout).is_ok(),
        }
    });
}
