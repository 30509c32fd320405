//! No secret (registration token, refresh token, access token, client secret)
//! reaches any log line, even at trace level for every crate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Server, oauth2_config, secret, sentinel_config, short_tokens, wait_for_renewals};
use regent_agent::agent::{Agent, EnrollOptions};
use regent_agent::secret::ExposeSecret;
use reqwest::Method;
use serde_json::{Value, json};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every secret value found in the file store's entries.
fn stored_secrets(path: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let entries: Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    let mut collect = |v: &Value| {
        for key in ["refresh_token", "client_secret"] {
            if let Some(s) = v[key].as_str() {
                out.push(s.to_owned());
            }
        }
        if let Some(s) = v["access"]["token"].as_str() {
            out.push(s.to_owned());
        }
    };
    fn walk(v: &Value, f: &mut dyn FnMut(&Value)) {
        match v {
            Value::String(s) => {
                if let Ok(inner) = serde_json::from_str::<Value>(s) {
                    f(&inner);
                }
            }
            Value::Object(m) => m.values().for_each(|x| walk(x, f)),
            Value::Array(a) => a.iter().for_each(|x| walk(x, f)),
            _ => {}
        }
    }
    walk(&entries, &mut collect);
    out
}

#[tokio::test]
async fn no_secret_in_any_log_line_at_trace_level() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_env_filter("trace")
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let server = Server::start(short_tokens(2)).await;
    let (_, registration) = server.mint(json!({"count": 2})).await;
    let mut secrets = vec![registration.clone(), "oauth-client-secret-value".to_owned()];

    // Sentinel: a refused token, an enrollment and several rotations.
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::open(sentinel_config(&server.url(), dir.path(), ""))
        .await
        .unwrap();
    let refused = "refused-registration-token-value";
    secrets.push(refused.to_owned());
    agent
        .enroll(secret(refused), EnrollOptions::default())
        .await
        .unwrap_err();
    agent
        .enroll(secret(&registration), EnrollOptions::default())
        .await
        .unwrap();
    let demand = agent.hold_demand(Duration::from_millis(500));
    for _ in 0..3 {
        let g = agent.token(Duration::from_millis(500)).await.unwrap();
        secrets.push(g.access_token.expose_secret().to_owned());
        wait_for_renewals(&agent, 1, Duration::from_secs(5)).await;
    }
    drop(demand);
    secrets.extend(stored_secrets(&dir.path().join("secrets.json")));

    // OAuth2: a wrong and a right client secret.
    let (status, _) = server
        .admin_call(
            Method::POST,
            "/oauth/clients",
            Some(json!({"clientId": "logs", "clientSecret": "oauth-client-secret-value", "accessTokenValidity": 60})),
        )
        .await;
    assert!(status == 200 || status == 201);
    let dir2 = tempfile::tempdir().unwrap();
    let oauth = Agent::open(oauth2_config(&server.url(), "logs", dir2.path(), "", ""))
        .await
        .unwrap();
    secrets.push("wrong-client-secret-value".to_owned());
    oauth
        .enroll(
            secret("wrong-client-secret-value"),
            EnrollOptions::default(),
        )
        .await
        .unwrap_err();
    oauth
        .enroll(
            secret("oauth-client-secret-value"),
            EnrollOptions::default(),
        )
        .await
        .unwrap();
    let g = oauth.token(Duration::from_secs(10)).await.unwrap();
    secrets.push(g.access_token.expose_secret().to_owned());
    secrets.extend(stored_secrets(&dir2.path().join("secrets.json")));

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.lines().count() > 20,
        "trace logging should have produced lines:\n{logs}"
    );
    assert!(
        logs.contains("access token renewed"),
        "agent logs were captured"
    );
    let mut checked = 0;
    for s in secrets.iter().filter(|s| s.len() >= 8) {
        assert!(!logs.contains(s.as_str()), "a secret leaked into the logs");
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} secrets checked");
}
