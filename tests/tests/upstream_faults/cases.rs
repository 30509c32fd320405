//! Running one case: the fault on, what the client sees, the fault off, recovery, the secret scan.

use super::*;

#[derive(Clone, Debug)]
pub(crate) struct Outcome {
    pub(crate) profile: Profile,
    pub(crate) phase: Phase,
    pub(crate) name: String,
    /// What the client's call returned while the fault was on.
    pub(crate) client: Result<(), ErrorCode>,
    /// The cause the agent recorded (`last_error_code`), or the enroll error.
    pub(crate) cause: Option<ErrorCode>,
    pub(crate) classify: Duration,
    pub(crate) recover: Option<Duration>,
    pub(crate) failures: Vec<String>,
}

impl Outcome {
    /// An outcome with nothing seen yet.
    pub(crate) fn new(profile: Profile, phase: Phase, name: String) -> Outcome {
        Outcome {
            profile,
            phase,
            name,
            client: Ok(()),
            cause: None,
            classify: Duration::ZERO,
            recover: None,
            failures: Vec::new(),
        }
    }
}

pub(crate) async fn run_case(profile: Profile, phase: Phase, case: Case) -> Outcome {
    let mut outcome = Outcome::new(profile, phase, case.name.clone());
    let rotate = profile == Profile::OAuth2;
    let world = World::start(profile, rotate).await;
    let result = match phase {
        Phase::Renew => renew_case(world, &case, &mut outcome).await,
        Phase::Enroll => enroll_case(world, &case, &mut outcome).await,
    };
    if let Err(e) = result {
        outcome.failures.push(e);
    }
    outcome
}

pub(crate) fn check_expectation(case: &Case, outcome: &mut Outcome, served: Option<&Token>) {
    match (case.expect, &outcome.client) {
        (Expect::Served, Ok(())) => {
            if let (Some(check), Some(token)) = (case.check, served)
                && let Err(e) = check(token)
            {
                outcome.failures.push(e);
            }
        }
        (Expect::Served, Err(code)) => outcome.failures.push(format!(
            "expected a token, got {code} (cause {:?})",
            outcome.cause
        )),
        (Expect::Code(_), Ok(())) => outcome
            .failures
            .push("expected a failure, the call succeeded".into()),
        (Expect::Code(codes), Err(_)) => {
            if !outcome.cause.is_some_and(|c| codes.contains(&c)) {
                outcome.failures.push(format!(
                    "classified as {:?}, expected one of {codes:?}",
                    outcome.cause
                ));
            }
        }
    }
}

pub(crate) async fn renew_case(
    mut w: World,
    case: &Case,
    outcome: &mut Outcome,
) -> Result<(), String> {
    bounded("enrollment", CALL_BOUND, w.enroll())
        .await?
        .map_err(|e| {
            format!(
                "enrollment before the fault failed: {} {}",
                e.code, e.message
            )
        })?;
    let first = w
        .token(Duration::from_secs(1))
        .await
        .map_err(|e| e.message)?;
    tokio::time::sleep(AGE).await;

    w.inject(&case.inject, Phase::Renew).await;
    // The cached token is still valid: served during the outage.
    let cached = bounded("cached token", IPC_BOUND, w.token(Duration::from_secs(1)))
        .await?
        .map_err(|e| {
            format!(
                "cached token not served during the fault: {} {}",
                e.code, e.message
            )
        })?;
    if cached.secret() != first.secret() {
        return Err("a different token than the cached one was served".into());
    }

    // A request that needs a renewal, through the fault.
    let started = Instant::now();
    let client = w.client.clone();
    let call = tokio::spawn(async move {
        let result = client.token(MIN_VALID).await;
        (result, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    w.status().await?;
    let (result, took) = bounded("token request needing a renewal", CALL_BOUND, call)
        .await?
        .map_err(|e| format!("token task panicked: {e}"))?;
    outcome.classify = took;
    let served = match result {
        Ok(token) => {
            outcome.client = Ok(());
            Some(token)
        }
        Err(e) => {
            w.seen.push(e.message.clone());
            outcome.client = Err(e.code);
            if e.code != ErrorCode::Unavailable {
                outcome.failures.push(format!(
                    "the client saw {} (expected UNAVAILABLE): {}",
                    e.code, e.message
                ));
            }
            if e.retry_after.is_none() {
                outcome
                    .failures
                    .push("UNAVAILABLE without retry_after".into());
            }
            None
        }
    };
    outcome.cause = w.last_error_code().await?;
    check_expectation(case, outcome, served.as_ref());
    if let Some(t) = &served
        && t.secret() == first.secret()
    {
        outcome
            .failures
            .push("the old token was served as a renewed one".into());
    }
    if matches!(case.inject, Inject::Proxy(_)) && w.proxy.faulted() == 0 {
        outcome.failures.push("the fault was never applied".into());
    }

    // Fault off: a fresh token without a restart.
    w.clear().await;
    let cleared = Instant::now();
    let fresh = recover(&mut w, |w| Box::pin(w.token(MIN_VALID))).await?;
    outcome.recover = Some(cleared.elapsed());
    if fresh.secret() == first.secret() {
        outcome.failures.push("recovered with the old token".into());
    }
    let live = w.server.introspect(fresh.secret()).await;
    if live["active"] != true {
        outcome.failures.push(format!(
            "the recovered token is not live at the emulator: {live}"
        ));
    }
    scan(&w, outcome);
    w.stop().await
}

pub(crate) async fn enroll_case(
    mut w: World,
    case: &Case,
    outcome: &mut Outcome,
) -> Result<(), String> {
    w.inject(&case.inject, Phase::Enroll).await;
    let started = Instant::now();
    let client = w.client.clone();
    let secret = w.secret.clone();
    let call = tokio::spawn(async move {
        let result = client.enroll(secret, false).await;
        (result, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    w.status().await?;
    let (result, took) = bounded("enroll", CALL_BOUND, call)
        .await?
        .map_err(|e| format!("enroll task panicked: {e}"))?;
    outcome.classify = took;
    let mut served = None;
    match result {
        Ok(_) => {
            outcome.client = Ok(());
            let token = bounded(
                "token after enrollment",
                CALL_BOUND,
                w.token(Duration::from_secs(1)),
            )
            .await?;
            match token {
                Ok(t) => served = Some(t),
                Err(e) => outcome
                    .failures
                    .push(format!("enrolled, but no token: {} {}", e.code, e.message)),
            }
        }
        Err(e) => {
            w.seen.push(e.message.clone());
            outcome.client = Err(e.code);
            outcome.cause = Some(e.code);
            // The agent stays up and says why it has no token.
            let t = bounded(
                "token while not enrolled",
                IPC_BOUND,
                w.token(Duration::from_secs(1)),
            )
            .await?;
            if t.is_ok() && w.profile == Profile::OAuth2 {
                outcome
                    .failures
                    .push("a token was served after a failed enrollment".into());
            }
        }
    }
    check_expectation(case, outcome, served.as_ref());
    if matches!(case.inject, Inject::Proxy(_)) && w.proxy.faulted() == 0 {
        outcome.failures.push("the fault was never applied".into());
    }

    w.clear().await;
    let cleared = Instant::now();
    let fresh = if outcome.client.is_ok() {
        recover(&mut w, |w| Box::pin(w.token(Duration::from_secs(1)))).await?
    } else {
        match w.profile {
            // The interrupted redemption resumes by itself, same identifier.
            Profile::Sentinel if !case.reenroll => {
                recover(&mut w, |w| Box::pin(w.token(Duration::from_secs(1)))).await?
            }
            // Nothing was stored (oauth2), or the agent waits as the server
            // asked: the user enrolls again.
            _ => {
                recover(&mut w, |w| {
                    Box::pin(async move {
                        w.enroll().await?;
                        w.token(Duration::from_secs(1)).await
                    })
                })
                .await?
            }
        }
    };
    outcome.recover = Some(cleared.elapsed());
    let live = w.server.introspect(fresh.secret()).await;
    if live["active"] != true {
        outcome.failures.push(format!(
            "the token after recovery is not live at the emulator: {live}"
        ));
    }
    if w.profile == Profile::Sentinel {
        let used = w.used_count().await;
        if used != 1 {
            outcome.failures.push(format!(
                "the registration token's usedCount is {used}, not 1"
            ));
        }
    }
    scan(&w, outcome);
    w.stop().await
}

pub(crate) type Attempt<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<Token, regent_client::Error>> + Send + 'a>>;

/// Retries `attempt` (honouring `retry_after`, at most 500 ms at a time) until
/// it succeeds; fails after `RECOVERY_BOUND`.
pub(crate) async fn recover(
    w: &mut World,
    mut attempt: impl for<'a> FnMut(&'a mut World) -> Attempt<'a>,
) -> Result<Token, String> {
    let deadline = Instant::now() + RECOVERY_BOUND;
    let mut last = String::new();
    while Instant::now() < deadline {
        match bounded("recovery attempt", CALL_BOUND, attempt(w)).await? {
            Ok(token) => return Ok(token),
            Err(e) => {
                if !e.is_retryable() && e.code != ErrorCode::NotEnrolled {
                    return Err(format!(
                        "no recovery: a permanent error {} {}",
                        e.code, e.message
                    ));
                }
                last = format!("{} {}", e.code, e.message);
                let pause = e
                    .retry_after
                    .unwrap_or(Duration::from_millis(200))
                    .clamp(Duration::from_millis(50), Duration::from_millis(500));
                tokio::time::sleep(pause).await;
            }
        }
    }
    Err(format!(
        "no recovery within {RECOVERY_BOUND:?} after the fault cleared; last: {last}"
    ))
}

/// No secret in anything the client saw.
pub(crate) fn scan(w: &World, outcome: &mut Outcome) {
    let secrets = w.secrets();
    for text in &w.seen {
        for s in &secrets {
            if text.contains(s.as_str()) {
                outcome.failures.push(format!(
                    "a secret ({}…) appears in a message the client saw: {}",
                    &s[..6],
                    text.chars().take(300).collect::<String>()
                ));
            }
        }
    }
    SECRETS.lock().unwrap().extend(secrets);
}

pub(crate) static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());
