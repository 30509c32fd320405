//! Subscriptions are capped per connection and per agent, and pushing a
//! renewed token to many of them stays linear (issue 18, item 6): one client
//! subscribed 100,000 times on one connection and each renewal then cost
//! 15–18 s of CPU.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use regent_proto::ErrorCode;
use regent_proto::frame::{self, Framed};
use regent_proto::message::{Event, Op, Outcome, Reply, Request, Response, WireError};
use regent_tests::{AgentHome, AgentProc, EmulatorProc, text, wait_until};

/// A raw protocol connection (blocking), as any client could write it.
struct Raw {
    stream: UnixStream,
    buf: Vec<u8>,
}

/// What a `subscribe` request got back.
#[derive(Debug)]
enum Answer {
    Subscribed,
    Refused(WireError),
}

impl Raw {
    fn connect(socket: &Path) -> Raw {
        let stream = UnixStream::connect(socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut raw = Raw {
            stream,
            buf: Vec::new(),
        };
        raw.send(&[Request {
            id: 1,
            op: Op::Hello {
                versions: vec![1],
                app: "many-subscriptions".into(),
                instance: None,
            },
        }]);
        let hello = raw.next();
        assert!(
            matches!(hello.outcome, Outcome::Ok(Reply::Hello { .. })),
            "{hello:?}"
        );
        raw
    }

    fn send(&mut self, requests: &[Request]) {
        let mut out = Vec::new();
        for r in requests {
            frame::encode(r, &mut out).unwrap();
        }
        self.stream.write_all(&out).unwrap();
    }

    fn next(&mut self) -> Response {
        loop {
            if let Framed::Frame { len } = frame::frame_len(&self.buf).unwrap() {
                let end = frame::HEADER + len;
                let response = serde_json::from_slice(&self.buf[frame::HEADER..end]).unwrap();
                self.buf.drain(..end);
                return response;
            }
            let mut chunk = [0u8; 64 * 1024];
            let n = self.stream.read(&mut chunk).expect("the agent answers");
            assert!(n > 0, "the agent closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Subscribes with ids `first..first + n` (pipelined); returns each
    /// request's answer and the first token pushed to each subscription.
    fn subscribe(&mut self, first: u64, n: u64) -> (HashMap<u64, Answer>, HashMap<u64, u64>) {
        let requests: Vec<Request> = (first..first + n)
            .map(|id| Request {
                id,
                op: Op::Subscribe { min_valid: 1 },
            })
            .collect();
        self.send(&requests);
        let mut answers = HashMap::new();
        let mut tokens = HashMap::new();
        // Every accepted subscription also gets a first token right away.
        while answers.len() < n as usize
            || answers
                .iter()
                .any(|(id, a)| matches!(a, Answer::Subscribed) && !tokens.contains_key(id))
        {
            let r = self.next();
            match r.outcome {
                Outcome::Ok(Reply::Subscribed {}) => {
                    answers.insert(r.id, Answer::Subscribed);
                }
                Outcome::Error(e) => {
                    answers.insert(r.id, Answer::Refused(e));
                }
                Outcome::Event(Event::Token(t)) => {
                    tokens.entry(r.id).or_insert(t.expires_at_ms);
                }
                // State changes may be pushed meanwhile; not what is counted.
                Outcome::Event(Event::State { .. }) => {}
                other => panic!("unexpected answer to subscribe {}: {other:?}", r.id),
            }
        }
        (answers, tokens)
    }
}

fn enrolled(lifetime: u64, extra: &str) -> (EmulatorProc, AgentHome, AgentProc) {
    let emulator = EmulatorProc::start(lifetime);
    let home = AgentHome::new(&emulator.url, extra);
    let agent = AgentProc::start(&home);
    let out = home.regent(&["enroll"], Some(&emulator.mint(1)));
    assert!(out.status.success(), "{}", text(&out));
    (emulator, home, agent)
}

fn accepted(answers: &HashMap<u64, Answer>) -> usize {
    answers
        .values()
        .filter(|a| matches!(a, Answer::Subscribed))
        .count()
}

/// Regression: subscriptions were unbounded. Past the per-connection cap
/// (default 256) a subscription is refused `BAD_REQUEST`; past the agent's
/// cap `UNAVAILABLE` with `retry_after`; a closed connection frees its share.
#[test]
fn subscriptions_past_the_caps_are_refused_with_a_clear_error() {
    let (_emulator, home, _agent) = enrolled(300, "[ipc]\nmax_subscriptions = 300\n");

    let mut first = Raw::connect(&home.socket);
    let (answers, _) = first.subscribe(10, 257);
    assert_eq!(accepted(&answers), 256, "the per-connection default is 256");
    match &answers[&266] {
        Answer::Refused(e) => {
            assert_eq!(e.code, ErrorCode::BadRequest, "{e:?}");
            assert!(
                e.message.contains("max_subscriptions_per_connection"),
                "{e:?}"
            );
        }
        other => panic!("the 257th subscription on one connection: {other:?}"),
    }

    let mut second = Raw::connect(&home.socket);
    let (answers, _) = second.subscribe(10, 60);
    assert_eq!(accepted(&answers), 44, "300 for the whole agent");
    let refused: Vec<&WireError> = answers
        .values()
        .filter_map(|a| match a {
            Answer::Refused(e) => Some(e),
            Answer::Subscribed => None,
        })
        .collect();
    assert_eq!(refused.len(), 16);
    for e in refused {
        assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}");
        assert!(e.message.contains("max_subscriptions"), "{e:?}");
        assert!(e.retry_after_ms.is_some(), "{e:?}");
    }

    // Closing a connection gives its subscriptions back.
    drop(first);
    let mut third = Raw::connect(&home.socket);
    let mut next_id = 10;
    wait_until(
        Duration::from_secs(20),
        "subscriptions freed by a closed connection",
        || {
            let (answers, _) = third.subscribe(next_id, 1);
            next_id += 1;
            accepted(&answers) == 1
        },
    );
    let (answers, _) = third.subscribe(next_id, 200);
    assert_eq!(accepted(&answers), 200);
}

/// Many subscriptions within the caps (10,000 on 40 connections) each
/// receive the next renewed token: counted, not timed.
#[test]
fn ten_thousand_subscriptions_all_receive_the_next_token() {
    const CONNECTIONS: usize = 40;
    const PER_CONNECTION: u64 = 250;
    let (_emulator, home, _agent) = enrolled(6, "");
    let threads: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let socket = home.socket.clone();
            std::thread::spawn(move || {
                let mut raw = Raw::connect(&socket);
                let (answers, first) = raw.subscribe(10, PER_CONNECTION);
                assert_eq!(accepted(&answers), PER_CONNECTION as usize, "{answers:?}");
                // Read until every subscription has a token newer than its first.
                let mut renewed = HashMap::new();
                let deadline = Instant::now() + Duration::from_secs(120);
                while renewed.len() < first.len() {
                    assert!(Instant::now() < deadline, "no renewed token within 120 s");
                    let r = raw.next();
                    if let Outcome::Event(Event::Token(t)) = r.outcome
                        && t.expires_at_ms > first[&r.id]
                    {
                        renewed.insert(r.id, t.expires_at_ms);
                    }
                }
                renewed.len()
            })
        })
        .collect();
    let total: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(total, CONNECTIONS * PER_CONNECTION as usize);
}
