//! What must hold after a kill and a restart: the credential, one count,
//! a live session, a served token, and no leftover files.

use super::*;

pub(crate) fn verify(
    emulator: &EmulatorProc,
    home: &Home,
    token: &str,
    plan: &Plan,
    refreshes_at_kill: u64,
    persisted_renewals: usize,
) -> Result<Outcome, String> {
    // Settle: a resumed redemption finishes; a pending one never just sits.
    let s = wait_slot(home, "the restarted agent to settle", WAIT, |s| {
        matches!(state_of(s), "active" | "degraded" | "revoked")
            || (state_of(s) == "unenrolled" && s["pending_redemption"] == false)
    })?;
    let mut outcome = Outcome::Recovered;
    if state_of(&s) == "unenrolled" {
        // Acceptable only when nothing reached the server.
        let counters = emulator.counters();
        if plan.renewal() {
            return Err(format!("an enrolled agent forgot its credential: {s}"));
        }
        if !plan.oauth2 && (emulator.used_counts() != 0 || counters["redemptions"] != 0) {
            return Err(format!(
                "the server redeemed the registration token but the restarted agent is not \
                 enrolled and has no pending redemption (credential lost): {counters}"
            ));
        }
        // Nothing half-done is left: no marker, no stored registration token.
        check_no_leftovers(home, plan)?;
        home.client()
            .enroll(token.to_owned(), false)
            .map_err(|e| format!("enrolling again failed: {} ({})", e.message, e.code))?;
        outcome = Outcome::Reenrolled;
    }

    // The session must be alive: a renewal after the restart succeeds.
    let renewed = renewal_after_restart(home)?;
    if state_of(&renewed) == "revoked" {
        let error = renewed["last_error"].as_str().unwrap_or_default();
        // OAuth2 falls back to client credentials: never revoked by a crash.
        let known = plan.renewal()
            && !plan.oauth2
            && plan.rotate
            && error.contains("refresh token reuse")
            && refreshes_at_kill > persisted_renewals as u64;
        if !known {
            return Err(format!(
                "slot revoked after the restart (server refreshes before the kill: \
                 {refreshes_at_kill}, renewals the agent persisted: {persisted_renewals}): {renewed}"
            ));
        }
        // Recovery: the same registration token again is a replay (no count).
        home.client().enroll(token.to_owned(), false).map_err(|e| {
            format!(
                "re-enrolling after the known limit failed: {} ({})",
                e.message, e.code
            )
        })?;
        let again = renewal_after_restart(home)?;
        if state_of(&again) != "active" {
            return Err(format!("not active after re-enrolling: {again}"));
        }
        outcome = Outcome::KnownLimit;
    }

    // The next token is served and the server accepts it.
    let granted = token_eventually(home)?;
    let seen = emulator.introspect(granted.secret());
    if seen["active"] != true {
        return Err(format!(
            "the served token is not active at the server: {seen}"
        ));
    }

    if plan.oauth2 {
        if seen["clientId"] != OAUTH2_CLIENT {
            return Err(format!("the served token is not the client's: {seen}"));
        }
        let expected = match plan.kill {
            // Nothing counts until the credential is stored, and then the
            // enrollment is over: every enrollment point means enrolling again.
            Kill::EnrollPoint(_) => Outcome::Reenrolled,
            _ => Outcome::Recovered,
        };
        if matches!(plan.kill, Kill::EnrollPoint(_) | Kill::RenewPoint(_)) && outcome != expected {
            return Err(format!(
                "expected {}, got {}",
                expected.name(),
                outcome.name()
            ));
        }
        return Ok(outcome);
    }

    // No second count, one auth token (the one the token belongs to), one live session.
    let counters = emulator.counters();
    let used = emulator.used_counts();
    if used != 1 || counters["redemptions"] != 1 {
        return Err(format!("counts consumed: {used} (expected 1): {counters}"));
    }
    let auth_tokens = emulator.auth_tokens();
    if auth_tokens.len() != 1 || auth_tokens[0]["id"] != seen["authTokenId"] {
        return Err(format!(
            "auth tokens at the server: {auth_tokens:?}; the served token belongs to {}",
            seen["authTokenId"]
        ));
    }
    if counters["activeSessions"] != 1 {
        return Err(format!("expected one live session: {counters}"));
    }

    // Named points have one expected outcome each.
    if let Kill::RenewPoint(point) = &plan.kill {
        // Only a kill between a rotation and its save loses the session: at
        // `after-refresh`, or during the renewed credential's write (the even
        // atomic writes; the odd ones are write-aheads, before anything is sent).
        let rotation_unsaved = point.starts_with("after-refresh")
            || point.strip_prefix("mid-store-write").is_some_and(|rest| {
                let n: u64 = rest.strip_prefix('@').map_or(1, |n| n.parse().unwrap());
                n.is_multiple_of(2)
            });
        let expected = if rotation_unsaved && plan.rotate {
            Outcome::KnownLimit
        } else {
            Outcome::Recovered
        };
        if outcome != expected {
            return Err(format!(
                "expected {} after {point}, got {}",
                expected.name(),
                outcome.name()
            ));
        }
    }
    if let Kill::EnrollPoint(point) = &plan.kill {
        // Before the registration token is durable nothing is sent, so the
        // user enrolls again; from then on the agent recovers on its own.
        let expected = match point.split_once('@') {
            Some(("mid-store-write", n)) => {
                let n: u64 = n.parse().unwrap();
                let first_recovering = match plan.store {
                    Store::File => 4,     // the credential write
                    Store::Keychain => 3, // the cleared marker
                };
                if n < first_recovering {
                    Outcome::Reenrolled
                } else {
                    Outcome::Recovered
                }
            }
            _ => Outcome::Recovered,
        };
        if outcome != expected {
            return Err(format!(
                "expected {} after {point}, got {}",
                expected.name(),
                outcome.name()
            ));
        }
    }
    Ok(outcome)
}

/// The next token for a client that retries when told to (a server that
/// re-issues a token about to expire makes the agent wait for its expiry).
pub(crate) fn token_eventually(home: &Home) -> Result<regent_client::Token, String> {
    let deadline = Instant::now() + WAIT;
    let client = home.client();
    loop {
        match client.token(Duration::from_secs(1)) {
            Ok(token) => return Ok(token),
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                let pause = e.retry_after.unwrap_or(Duration::from_millis(100));
                std::thread::sleep(pause.clamp(Duration::from_millis(20), Duration::from_secs(2)));
            }
            Err(e) => {
                return Err(format!(
                    "no token after the restart: {} ({})",
                    e.message, e.code
                ));
            }
        }
    }
}

/// Asks for a token (demand), then waits for a successful renewal by this
/// agent process, or for the slot to be revoked.
pub(crate) fn renewal_after_restart(home: &Home) -> Result<serde_json::Value, String> {
    let before = slot0(home)["renewals_ok"].as_u64().unwrap_or(0);
    // Served from the cache or after a renewal; either way demand is noted.
    let _ = home.client().token(Duration::from_secs(1));
    wait_slot(home, "a renewal after the restart", WAIT, |s| {
        state_of(s) == "revoked"
            || (state_of(s) == "active" && s["renewals_ok"].as_u64().unwrap_or(0) > before)
    })
}

/// After an interrupted enrollment that sent nothing: no pending marker, no
/// registration token in the file store.
pub(crate) fn check_no_leftovers(home: &Home, plan: &Plan) -> Result<(), String> {
    if let Ok(text) = std::fs::read_to_string(home.state.join("state.json")) {
        let state: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("state.json does not parse: {e}"))?;
        if state["slots"]["0"].get("pending_since").is_some() {
            return Err(format!("pending marker left in state.json: {state}"));
        }
    }
    if plan.store == Store::File
        && let Ok(text) = std::fs::read_to_string(home.state.join("secrets.json"))
        && text.contains("slot-0.registration")
    {
        return Err("a registration token was left in secrets.json".into());
    }
    let left = temp_files(&home.state);
    if !left.is_empty() {
        return Err(format!(
            "temporary files left in the state directory: {left:?}"
        ));
    }
    Ok(())
}

pub(crate) fn check_files(home: &Home, plan: &Plan) -> Result<(), String> {
    let state_text = std::fs::read_to_string(home.state.join("state.json"))
        .map_err(|e| format!("state.json: {e}"))?;
    let state: serde_json::Value =
        serde_json::from_str(&state_text).map_err(|e| format!("state.json does not parse: {e}"))?;
    if state["slots"]["0"].get("pending_since").is_some() {
        return Err(format!("pending marker left in state.json: {state}"));
    }
    if plan.store == Store::File {
        let text = std::fs::read_to_string(home.state.join("secrets.json"))
            .map_err(|e| format!("secrets.json: {e}"))?;
        let secrets: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("secrets.json does not parse: {e}"))?;
        let credential: serde_json::Value = serde_json::from_str(
            secrets["slot-0.credential"]
                .as_str()
                .ok_or("no slot-0.credential in secrets.json")?,
        )
        .map_err(|e| format!("the stored credential does not parse: {e}"))?;
        let needed = if plan.oauth2 {
            "client_secret"
        } else {
            "refresh_token"
        };
        if credential[needed].as_str().is_none_or(str::is_empty) {
            return Err(format!("the stored credential has no {needed}"));
        }
        if secrets.get("slot-0.registration").is_some() {
            return Err("the used registration token is still in secrets.json".into());
        }
    }
    let left = temp_files(&home.state);
    if !left.is_empty() {
        return Err(format!(
            "temporary files left in the state directory: {left:?}"
        ));
    }
    Ok(())
}
