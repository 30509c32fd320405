//! The blocking client against a scripted agent on the platform's real IPC (a Unix
//! socket, or a named pipe on Windows, where `scripts/test-windows.sh` runs
//! it under Wine).
// Test code: unwrapping and panicking is how a test (or its helper) fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Action, FakeAgent, on_nth, standard};
use regent_client::blocking::{Client, TokenSource};
use regent_client::{ClientOptions, ErrorCode, SubscriptionEvent};
use regent_proto::frame;
use regent_proto::message::{Event, Op, WireError};

#[test]
fn a_missing_agent_is_reported_at_once_with_the_remedy() {
    let (_dir, socket) = common::endpoint();
    let started = Instant::now();
    let e = Client::connect(ClientOptions::new("app").socket(&socket)).unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(e.code, ErrorCode::AgentUnreachable);
    assert!(e.message.contains(&*socket.to_string_lossy()), "{e}");
    assert!(e.message.contains("REGENT_SOCKET"), "{e}");
    assert!(e.is_retryable());
}

#[test]
fn connecting_says_hello_and_tokens_carry_the_reply() {
    let agent = FakeAgent::start(standard);
    let client = Client::connect(agent.options().instance("i-7")).unwrap();
    assert_eq!(client.agent_info().agent, "fake-0.1");
    // Sub-second parts round up: never ask for less validity than needed.
    let token = client.token(Duration::from_millis(90_500)).unwrap();
    assert_eq!(token.secret(), "token-91");
    assert_eq!(token.token_type, "Bearer");
    assert_eq!(token.scope.as_deref(), Some("licensed"));
    assert!(token.remaining() > Duration::from_secs(3500));
    let requests = agent.requests();
    match &requests[0].op {
        Op::Hello {
            versions,
            app,
            instance,
        } => {
            assert_eq!(versions, regent_proto::message::SUPPORTED_VERSIONS);
            assert_eq!(app, "test-app");
            assert_eq!(instance.as_deref(), Some("i-7"));
        }
        other => panic!("first request was {other:?}"),
    }
    assert!(matches!(requests[1].op, Op::Token { min_valid: 91, .. }));
    assert_eq!(
        client.status().unwrap().slots[0].state,
        regent_client::SlotState::Active
    );
    assert_eq!(client.metrics().unwrap(), "regent_up 1\n");
    assert_eq!(agent.connections(), 1);
}

#[test]
fn agent_errors_keep_their_code_number_and_retry_hint() {
    let agent = FakeAgent::start(|request| match request.op {
        Op::Token { min_valid: 1, .. } => {
            let mut revoked = WireError::new(
                ErrorCode::Revoked,
                "auth token deleted by the administrator",
            );
            revoked.retry_after_ms = Some(1500);
            vec![Action::Send(regent_proto::message::Response {
                id: request.id,
                outcome: regent_proto::message::Outcome::Error(revoked),
            })]
        }
        Op::Token { .. } => vec![Action::Send(common::error(
            request.id,
            ErrorCode::Unavailable,
            "no token with 2 h validity",
        ))],
        _ => standard(request),
    });
    let client = Client::connect(agent.options()).unwrap();
    let e = client.token(Duration::from_secs(1)).unwrap_err();
    assert_eq!(e.code, ErrorCode::Revoked);
    assert_eq!(e.number(), 6);
    assert_eq!(e.to_string(), "auth token deleted by the administrator");
    assert_eq!(e.retry_after, Some(Duration::from_millis(1500)));
    assert!(!e.is_retryable());
    let e = client.token(Duration::from_secs(7200)).unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable);
    assert!(e.is_retryable());
    assert_eq!(agent.connections(), 1, "errors do not cost the connection");
}

#[test]
fn an_agent_speaking_no_common_version_is_refused() {
    let agent = FakeAgent::start(speaks_protocol_7_only);
    let e = Client::connect(agent.options()).unwrap_err();
    assert_eq!(e.code, ErrorCode::UnsupportedVersion);
}

#[test]
fn a_stalled_request_times_out_and_its_late_answer_is_skipped() {
    // The stalled token is answered only when the next request arrives,
    // just before that request's own answer.
    let held = Arc::new(Mutex::new(None));
    let agent = FakeAgent::start({
        let held = Arc::clone(&held);
        move |request| match request.op {
            Op::Token { .. } => {
                *held.lock().unwrap() =
                    Some(common::token(request.id, "late", Duration::from_secs(60)));
                vec![]
            }
            Op::Status {} => {
                let mut actions: Vec<Action> = held
                    .lock()
                    .unwrap()
                    .take()
                    .map(Action::Send)
                    .into_iter()
                    .collect();
                actions.extend(standard(request));
                actions
            }
            _ => standard(request),
        }
    });
    let client =
        Client::connect(agent.options().request_timeout(Duration::from_millis(200))).unwrap();
    let started = Instant::now();
    let e = client.token(Duration::from_secs(1)).unwrap_err();
    let waited = started.elapsed();
    assert_eq!(e.code, ErrorCode::Timeout);
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    assert!(e.message.contains("token"), "{e}");
    assert_eq!(
        client.status().unwrap().slots[0].state,
        regent_client::SlotState::Active
    );
    assert_eq!(agent.connections(), 1);
}

#[test]
fn the_next_call_after_an_agent_restart_reconnects() {
    let mut agent = FakeAgent::start(standard);
    let client = Client::connect(agent.options()).unwrap();
    assert_eq!(
        client.token(Duration::from_secs(5)).unwrap().secret(),
        "token-5"
    );
    agent.restart();
    assert_eq!(
        client.token(Duration::from_secs(6)).unwrap().secret(),
        "token-6"
    );
    assert_eq!(agent.connections(), 2);
    assert_eq!(agent.count("hello"), 2);
    assert_eq!(
        agent.count("token"),
        2,
        "the dead connection swallowed nothing"
    );
}

#[test]
fn a_token_request_cut_off_mid_way_is_resent_once() {
    let agent = FakeAgent::start(on_nth("token", 1, |_| vec![Action::Close]));
    let client = Client::connect(agent.options()).unwrap();
    assert_eq!(
        client.token(Duration::from_secs(5)).unwrap().secret(),
        "token-5"
    );
    assert_eq!(agent.count("token"), 2);
    assert_eq!(agent.connections(), 2);
}

#[test]
fn a_request_failing_on_a_fresh_connection_is_not_resent_again() {
    let agent = FakeAgent::start(|request| match request.op {
        Op::Token { .. } => vec![Action::Close],
        _ => standard(request),
    });
    let client = Client::connect(agent.options()).unwrap();
    let e = client.token(Duration::from_secs(5)).unwrap_err();
    assert_eq!(e.code, ErrorCode::AgentUnreachable);
    assert_eq!(agent.count("token"), 2, "one resend, no loop");
}

#[test]
fn an_enroll_cut_off_mid_way_is_not_resent() {
    let agent = FakeAgent::start(on_nth("enroll", 1, |_| vec![Action::Close]));
    let client = Client::connect(agent.options()).unwrap();
    let e = client
        .enroll("reg-token-hunter2".to_owned(), false)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::AgentUnreachable);
    assert!(e.message.contains("may or may not"), "{e}");
    assert!(!e.message.contains("hunter2"));
    assert!(!format!("{e:?}").contains("hunter2"));
    assert_eq!(agent.count("enroll"), 1);
    // The client itself recovers.
    assert!(client.status().is_ok());
}

#[test]
fn an_enroll_on_a_connection_that_died_while_idle_goes_to_the_new_agent() {
    let mut agent = FakeAgent::start(standard);
    let client = Client::connect(agent.options()).unwrap();
    agent.restart();
    let enrolled = client.enroll("reg-token".to_owned(), true).unwrap();
    assert_eq!(enrolled.identifier, "device-1/0");
    assert_eq!(enrolled.auth_token_id.as_deref(), Some("at-1"));
    assert_eq!(agent.count("enroll"), 1);
    let requests = agent.requests();
    let enroll = requests.iter().find(|r| r.op.name() == "enroll").unwrap();
    assert!(
        matches!(&enroll.op, Op::Enroll { secret, force: true } if secret.expose() == "reg-token")
    );
    client.unenroll().unwrap();
}

#[test]
fn a_down_agent_fails_calls_fast_and_a_returning_one_is_found() {
    let mut agent = FakeAgent::start(standard);
    let client = Client::connect(agent.options()).unwrap();
    agent.shut_down();
    let started = Instant::now();
    let e = client.token(Duration::from_secs(1)).unwrap_err();
    assert_eq!(e.code, ErrorCode::AgentUnreachable);
    assert!(started.elapsed() < Duration::from_millis(500));
    agent.restart();
    assert!(client.token(Duration::from_secs(1)).is_ok());
}

#[test]
fn garbage_from_the_agent_is_a_bad_request_and_costs_only_the_connection() {
    let agent = FakeAgent::start(on_nth("status", 1, |_| {
        let mut bytes = Vec::new();
        frame::encode_raw(b"{\"id\": \"not a number\"}", &mut bytes).unwrap();
        vec![Action::Raw(bytes)]
    }));
    let client = Client::connect(agent.options()).unwrap();
    let e = client.status().unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert_eq!(
        agent.count("status"),
        1,
        "a protocol violation is not retried"
    );
    assert!(client.status().is_ok());
    assert_eq!(agent.connections(), 2);
}

#[test]
fn threads_share_one_client_and_each_gets_its_own_answer() {
    let agent = FakeAgent::start(standard);
    let client = Arc::new(Client::connect(agent.options()).unwrap());
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let client = Arc::clone(&client);
            std::thread::spawn(move || {
                for i in 0..25u64 {
                    let secs = t * 100 + i;
                    let token = client.token(Duration::from_secs(secs)).unwrap();
                    assert_eq!(token.secret(), format!("token-{secs}"));
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(agent.count("token"), 200);
    assert_eq!(agent.connections(), 1);
}

#[test]
fn subscriptions_deliver_tokens_and_states_and_resubscribe_after_a_break() {
    let agent = FakeAgent::start(standard);
    let client = Client::connect(agent.options()).unwrap();
    let mut subscription = client.subscribe(Duration::from_millis(29_001)).unwrap();
    match subscription.next(Some(Duration::from_secs(5))).unwrap() {
        Some(SubscriptionEvent::Token(token)) => assert_eq!(token.secret(), "pushed-30"),
        other => panic!("expected the first token, got {other:?}"),
    }
    assert_eq!(
        subscription
            .next(Some(Duration::from_millis(50)))
            .unwrap()
            .map(|_| ()),
        None
    );
    agent.push(Event::Token(common::token_reply(
        "renewed",
        Duration::from_secs(60),
    )));
    match subscription.next(None).unwrap() {
        Some(SubscriptionEvent::Token(token)) => assert_eq!(token.secret(), "renewed"),
        other => panic!("expected the renewed token, got {other:?}"),
    }
    agent.push(Event::State {
        state: "revoked".into(),
        error: Some(WireError::new(ErrorCode::Revoked, "auth token deleted")),
    });
    match subscription.next(Some(Duration::from_secs(5))).unwrap() {
        Some(SubscriptionEvent::State { state, error }) => {
            assert_eq!(state, "revoked");
            assert_eq!(error.map(|e| e.code), Some(ErrorCode::Revoked));
        }
        other => panic!("expected a state change, got {other:?}"),
    }
    agent.kill_connections();
    let e = subscription.next(Some(Duration::from_secs(5))).unwrap_err();
    assert_eq!(e.code, ErrorCode::AgentUnreachable);
    match subscription.next(Some(Duration::from_secs(5))).unwrap() {
        Some(SubscriptionEvent::Token(token)) => assert_eq!(token.secret(), "pushed-30"),
        other => panic!("expected a token after resubscribing, got {other:?}"),
    }
    assert_eq!(agent.count("subscribe"), 2);
    // The client's own connection was killed too; it reconnects.
    assert!(client.token(Duration::from_secs(1)).is_ok());
}

#[test]
fn the_token_source_serves_from_cache_until_min_valid_would_be_violated() {
    // First answer: a token with less validity left than asked (as if the
    // clock moved on); later answers: an hour.
    let agent = FakeAgent::start(on_nth("token", 1, |request| {
        vec![Action::Send(common::token(
            request.id,
            "short",
            Duration::from_secs(10),
        ))]
    }));
    let source = TokenSource::new(
        Client::connect(agent.options()).unwrap(),
        Duration::from_secs(60),
    );
    assert_eq!(source.token().unwrap().secret(), "short");
    assert_eq!(agent.count("token"), 1);
    for _ in 0..100 {
        assert_eq!(source.token().unwrap().secret(), "token-60");
    }
    assert_eq!(agent.count("token"), 2, "one refetch, then the cache");
    source.invalidate();
    source.token().unwrap();
    assert_eq!(agent.count("token"), 3);
}

#[test]
fn the_token_source_makes_one_request_for_many_threads() {
    let agent = FakeAgent::start(standard);
    let source = Arc::new(TokenSource::new(
        Client::connect(agent.options()).unwrap(),
        Duration::from_secs(60),
    ));
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let source = Arc::clone(&source);
            std::thread::spawn(move || {
                for _ in 0..50 {
                    assert_eq!(source.token().unwrap().secret(), "token-60");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(agent.count("token"), 1);
}

#[test]
fn blocking_types_are_thread_safe() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Client>();
    send_sync::<TokenSource>();
    fn send<T: Send>() {}
    send::<regent_client::blocking::Subscription>();
}

/// `token_once` sends `hello` and `token` together: this agent answers the
/// `hello` only once the `token` request is in, so a client that waited for
/// that answer before asking would time out.
#[test]
fn token_once_pipelines_hello_and_token() {
    let agent = FakeAgent::start(|request| match request.op {
        Op::Hello { .. } => Vec::new(),
        Op::Token { .. } => {
            let hello = common::ok(
                request.id - 1,
                regent_proto::message::Reply::Hello {
                    version: 1,
                    agent: "fake-0.1".into(),
                },
            );
            let mut actions = vec![Action::Send(hello)];
            actions.extend(standard(request));
            actions
        }
        _ => standard(request),
    });
    let options = agent
        .options()
        .connect_timeout(Duration::from_secs(2))
        .request_timeout(Duration::from_secs(2));
    let token = Client::token_once(options, Duration::from_secs(30)).unwrap();
    assert_eq!(token.access_token(), "token-30");
    assert_eq!(agent.count("hello"), 1);
    assert_eq!(agent.connections(), 1);
}

/// The `hello` answer still decides: its refusal is the call's error.
#[test]
fn token_once_reports_the_hello_refusal() {
    let agent = FakeAgent::start(speaks_protocol_7_only);
    let e = Client::token_once(agent.options(), Duration::from_secs(30)).unwrap_err();
    assert_eq!(e.code, ErrorCode::UnsupportedVersion, "{e}");
}

/// An agent that refuses every `hello`: it shares no protocol version.
fn speaks_protocol_7_only(request: &regent_proto::message::Request) -> Vec<Action> {
    match request.op {
        Op::Hello { .. } => vec![Action::Send(common::error(
            request.id,
            ErrorCode::UnsupportedVersion,
            "this agent speaks protocol 7 only",
        ))],
        _ => standard(request),
    }
}
