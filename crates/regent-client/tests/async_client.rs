//! The async client against a scripted agent on the platform's real IPC (a Unix
//! socket, or a named pipe on Windows, where `scripts/test-windows.sh` runs
//! it under Wine).
// Test code: unwrapping and panicking is how a test (or its helper) fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Action, FakeAgent, on_nth, standard};
use regent_client::{Client, ClientOptions, ErrorCode, SubscriptionEvent, TokenSource};
use regent_proto::message::{Event, Op, Response, WireError};

#[tokio::test]
async fn a_missing_agent_is_reported_at_once_with_the_remedy() {
    let (_dir, socket) = common::endpoint();
    let started = Instant::now();
    let e = Client::connect(ClientOptions::new("app").socket(&socket))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(e.code, ErrorCode::AgentUnreachable);
    assert!(e.message.contains(&*socket.to_string_lossy()), "{e}");
    assert!(e.message.contains("REGENT_SOCKET"), "{e}");
}

#[tokio::test]
async fn an_agent_that_never_says_hello_times_out_the_connect() {
    let agent = FakeAgent::start(|request| match request.op {
        Op::Hello { .. } => vec![],
        _ => standard(request),
    });
    let started = Instant::now();
    let e = Client::connect(agent.options().connect_timeout(Duration::from_millis(200)))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Timeout);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn connecting_says_hello_and_every_call_maps_its_reply() {
    let agent = FakeAgent::start(standard);
    let client = Client::connect(agent.options().instance("i-1"))
        .await
        .unwrap();
    assert_eq!(client.agent_info().agent, "fake-0.1");
    let token = client.token(Duration::from_millis(1)).await.unwrap();
    assert_eq!(token.secret(), "token-1");
    let status = client.status().await.unwrap();
    assert_eq!(status.slots[0].state, regent_client::SlotState::Active);
    assert_eq!(status.health(std::time::SystemTime::now()), Ok(()));
    assert_eq!(client.metrics().await.unwrap(), "regent_up 1\n");
    let enrolled = client.enroll("reg-token".to_owned(), false).await.unwrap();
    assert_eq!(enrolled.identifier, "device-1/0");
    client.unenroll().await.unwrap();
    let requests = agent.requests();
    assert!(
        matches!(&requests[0].op, Op::Hello { app, instance: Some(i), .. } if app == "test-app" && i == "i-1")
    );
    assert_eq!(agent.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_pipelined_requests_each_get_their_own_answer() {
    // Answers go out in swapped pairs, so responses arrive out of order.
    let held = Arc::new(Mutex::new(None::<Response>));
    let agent = FakeAgent::start({
        let held = Arc::clone(&held);
        move |request| match request.op {
            Op::Token { .. } => {
                let answer = standard(request);
                let earlier = held.lock().unwrap().take();
                match earlier {
                    None => {
                        let Some(Action::Send(response)) = answer.into_iter().next() else {
                            unreachable!()
                        };
                        *held.lock().unwrap() = Some(response);
                        vec![]
                    }
                    Some(earlier) => answer.into_iter().chain([Action::Send(earlier)]).collect(),
                }
            }
            _ => standard(request),
        }
    });
    let client = Client::connect(agent.options()).await.unwrap();
    let tasks: Vec<_> = (0..100u64)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let token = client.token(Duration::from_secs(1000 + i)).await.unwrap();
                assert_eq!(token.secret(), format!("token-{}", 1000 + i));
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(agent.count("token"), 100);
    assert_eq!(agent.connections(), 1, "all on one connection");
}

#[tokio::test]
async fn agent_errors_keep_their_code_number_and_retry_hint() {
    let agent = FakeAgent::start(|request| match request.op {
        Op::Token { .. } => {
            let mut revoked = WireError::new(
                ErrorCode::Revoked,
                "auth token deleted by the administrator",
            );
            revoked.retry_after_ms = Some(2500);
            vec![Action::Send(Response {
                id: request.id,
                outcome: regent_proto::message::Outcome::Error(revoked),
            })]
        }
        Op::Enroll { .. } => vec![Action::Send(common::error(
            request.id,
            ErrorCode::RegistrationTokenExhausted,
            "registration token has no counts left",
        ))],
        _ => standard(request),
    });
    let client = Client::connect(agent.options()).await.unwrap();
    let e = client.token(Duration::from_secs(1)).await.unwrap_err();
    assert_eq!((e.code, e.number()), (ErrorCode::Revoked, 6));
    assert_eq!(e.retry_after, Some(Duration::from_millis(2500)));
    assert_eq!(e.to_string(), "auth token deleted by the administrator");
    let e = client
        .enroll("reg-hunter2".to_owned(), false)
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::RegistrationTokenExhausted);
    assert_eq!(e.number(), 4);
    assert_eq!(agent.count("enroll"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_times_out_without_blocking_the_others() {
    let agent = FakeAgent::start(|request| match request.op {
        Op::Token { min_valid: 99, .. } => vec![],
        _ => standard(request),
    });
    let client = Client::connect(agent.options().request_timeout(Duration::from_millis(300)))
        .await
        .unwrap();
    let stalled = tokio::spawn({
        let client = client.clone();
        async move {
            let started = Instant::now();
            (
                client.token(Duration::from_secs(99)).await,
                started.elapsed(),
            )
        }
    });
    // Meanwhile, other calls on the same connection are answered.
    agent.wait_for("token", 1);
    for _ in 0..10 {
        assert_eq!(
            client.token(Duration::from_secs(1)).await.unwrap().secret(),
            "token-1"
        );
    }
    let (result, waited) = stalled.await.unwrap();
    let e = result.unwrap_err();
    assert_eq!(e.code, ErrorCode::Timeout);
    assert!(e.message.contains("300ms"), "{e}");
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    assert_eq!(agent.connections(), 1);
}

#[tokio::test]
async fn the_next_call_after_an_agent_restart_reconnects() {
    let mut agent = FakeAgent::start(standard);
    let client = Client::connect(agent.options()).await.unwrap();
    assert_eq!(
        client.token(Duration::from_secs(5)).await.unwrap().secret(),
        "token-5"
    );
    agent.restart();
    assert_eq!(
        client.token(Duration::from_secs(6)).await.unwrap().secret(),
        "token-6"
    );
    assert_eq!(agent.connections(), 2);
    assert_eq!(agent.count("hello"), 2);
    // The restart was noticed before sending: an enroll goes out too.
    agent.restart();
    client.enroll("reg-token".to_owned(), false).await.unwrap();
    assert_eq!(agent.count("enroll"), 1);
}

#[tokio::test]
async fn a_token_request_cut_off_mid_way_is_resent_once_but_an_enroll_is_not() {
    let agent = FakeAgent::start(on_nth("token", 1, |_| vec![Action::Close]));
    let client = Client::connect(agent.options()).await.unwrap();
    assert_eq!(
        client.token(Duration::from_secs(5)).await.unwrap().secret(),
        "token-5"
    );
    assert_eq!(agent.count("token"), 2);

    let agent = FakeAgent::start(on_nth("enroll", 1, |_| vec![Action::Close]));
    let client = Client::connect(agent.options()).await.unwrap();
    let e = client
        .enroll("reg-hunter2".to_owned(), false)
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::AgentUnreachable);
    assert!(e.message.contains("may or may not"), "{e}");
    assert!(!e.message.contains("hunter2"));
    assert_eq!(agent.count("enroll"), 1);
    assert!(client.status().await.is_ok(), "the client recovers");
}

#[tokio::test]
async fn a_down_agent_fails_calls_fast() {
    let mut agent = FakeAgent::start(standard);
    let client = Client::connect(agent.options()).await.unwrap();
    agent.shut_down();
    let started = Instant::now();
    let e = client.token(Duration::from_secs(1)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::AgentUnreachable);
    assert!(started.elapsed() < Duration::from_millis(500));
    agent.restart();
    assert!(client.token(Duration::from_secs(1)).await.is_ok());
}

async fn next(
    subscription: &mut regent_client::Subscription,
) -> regent_client::Result<SubscriptionEvent> {
    tokio::time::timeout(Duration::from_secs(5), subscription.next())
        .await
        .expect("an event within 5 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_deliver_tokens_and_states_and_resubscribe_after_a_break() {
    let agent = FakeAgent::start(standard);
    let client = Client::connect(agent.options()).await.unwrap();
    let mut subscription = client.subscribe(Duration::from_secs(30)).await.unwrap();
    match next(&mut subscription).await.unwrap() {
        SubscriptionEvent::Token(token) => assert_eq!(token.secret(), "pushed-30"),
        other => panic!("expected the first token, got {other:?}"),
    }
    // Calls share the connection with the subscription.
    assert_eq!(
        client.token(Duration::from_secs(2)).await.unwrap().secret(),
        "token-2"
    );
    agent.push(Event::Token(common::token_reply(
        "renewed",
        Duration::from_secs(60),
    )));
    match next(&mut subscription).await.unwrap() {
        SubscriptionEvent::Token(token) => assert_eq!(token.secret(), "renewed"),
        other => panic!("expected the renewed token, got {other:?}"),
    }
    agent.push(Event::State {
        state: "revoked".into(),
        error: Some(WireError::new(ErrorCode::Revoked, "auth token deleted")),
    });
    match next(&mut subscription).await.unwrap() {
        SubscriptionEvent::State { state, error } => {
            assert_eq!(state, "revoked");
            assert_eq!(error.map(|e| e.number()), Some(6));
        }
        other => panic!("expected a state change, got {other:?}"),
    }
    agent.kill_connections();
    let e = next(&mut subscription).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::AgentUnreachable);
    match next(&mut subscription).await.unwrap() {
        SubscriptionEvent::Token(token) => assert_eq!(token.secret(), "pushed-30"),
        other => panic!("expected a token after resubscribing, got {other:?}"),
    }
    assert_eq!(agent.count("subscribe"), 2);
    assert_eq!(agent.connections(), 2);
    drop(subscription);
    agent.wait_for("unsubscribe", 1);
    let unsubscribe = agent
        .requests()
        .into_iter()
        .find(|r| r.op.name() == "unsubscribe")
        .unwrap();
    let subscribe_id = agent
        .requests()
        .into_iter()
        .rfind(|r| r.op.name() == "subscribe")
        .unwrap()
        .id;
    assert!(
        matches!(unsubscribe.op, Op::Unsubscribe { subscription } if subscription == subscribe_id)
    );
}

#[tokio::test]
async fn a_refused_subscription_reports_the_agents_error() {
    let agent = FakeAgent::start(|request| match request.op {
        Op::Subscribe { .. } => vec![Action::Send(common::error(
            request.id,
            ErrorCode::NotEnrolled,
            "run `regent enroll` first",
        ))],
        _ => standard(request),
    });
    let client = Client::connect(agent.options()).await.unwrap();
    let e = client.subscribe(Duration::from_secs(30)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::NotEnrolled);
    assert_eq!(agent.count("subscribe"), 1);
    assert!(client.token(Duration::from_secs(1)).await.is_ok());
}

#[tokio::test]
async fn the_token_source_serves_from_cache_until_min_valid_would_be_violated() {
    let agent = FakeAgent::start(on_nth("token", 1, |request| {
        vec![Action::Send(common::token(
            request.id,
            "short",
            Duration::from_secs(10),
        ))]
    }));
    let source = TokenSource::new(
        Client::connect(agent.options()).await.unwrap(),
        Duration::from_secs(60),
    );
    assert_eq!(source.token().await.unwrap().secret(), "short");
    for _ in 0..100 {
        assert_eq!(source.token().await.unwrap().secret(), "token-60");
    }
    assert_eq!(agent.count("token"), 2, "one refetch, then the cache");
    source.invalidate();
    source.token().await.unwrap();
    assert_eq!(agent.count("token"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_token_source_makes_one_request_for_a_burst_of_tasks() {
    let agent = FakeAgent::start(standard);
    let source = Arc::new(TokenSource::new(
        Client::connect(agent.options()).await.unwrap(),
        Duration::from_secs(60),
    ));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let source = Arc::clone(&source);
            tokio::spawn(async move {
                for _ in 0..20 {
                    assert_eq!(source.token().await.unwrap().secret(), "token-60");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(agent.count("token"), 1);
}

#[test]
fn async_types_are_shareable() {
    fn clone_send_sync<T: Clone + Send + Sync>() {}
    clone_send_sync::<Client>();
    fn send_sync<T: Send + Sync>() {}
    send_sync::<TokenSource>();
    send_sync::<regent_client::Subscription>();
    send_sync::<regent_client::Error>();
    // Every future can be spawned on a multi-threaded runtime.
    fn spawnable<F: std::future::Future + Send + 'static>(_: F) {}
    fn futures(
        client: Client,
        source: Arc<TokenSource>,
        mut subscription: regent_client::Subscription,
    ) {
        spawnable(async move { client.enroll("s".to_owned(), false).await });
        spawnable(async move { source.token().await });
        spawnable(async move { subscription.next().await });
    }
    let _ = futures;
}
