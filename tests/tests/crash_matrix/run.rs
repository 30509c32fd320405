//! One iteration: a fresh home and emulator, the agent enrolling or renewing
//! under demand, killed as planned, then restarted.

use super::*;

pub(crate) fn calibrate(ctx: &mut Ctx, store: Store) {
    let mut took: Vec<Duration> = (0..3)
        .map(|_| {
            let emulator = EmulatorProc::start(LIFESPAN);
            let token = emulator.mint(COUNT);
            let home = home_for(ctx, &emulator, store, false);
            let agent = home.start(None);
            let client = home.client();
            let t = Instant::now();
            client.enroll(token, false).unwrap();
            let took = t.elapsed();
            agent.terminate();
            took
        })
        .collect();
    took.sort();
    ctx.calibration.0.insert(store, took[1]);
}

pub(crate) fn home_for(ctx: &Ctx, emulator: &EmulatorProc, store: Store, oauth2: bool) -> Home {
    let choice = match store {
        Store::File => StoreChoice::File,
        Store::Keychain => {
            // A service of its own for every agent home: nothing carries over.
            static HOMES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            StoreChoice::Keychain(format!(
                "regent-crash-{}-{}",
                std::process::id(),
                HOMES.fetch_add(1, Ordering::Relaxed)
            ))
        }
    };
    let profile = if oauth2 {
        Profile::OAuth2 {
            client_id: OAUTH2_CLIENT.to_owned(),
        }
    } else {
        Profile::Sentinel
    };
    let mut home = Home::new(&emulator.url, &profile, &choice, None, "");
    if store == Store::Keychain {
        home.env = ctx.keyring.as_ref().unwrap().env();
    }
    home
}

/// Runs an enrollment on a thread once the agent's socket answers; the thread
/// gives up quietly when `stop` is set first (an agent stopped before it listens).
pub(crate) fn enroll_in_background(
    home: &Home,
    token: &str,
    stop: Arc<AtomicBool>,
    started: std::sync::mpsc::Sender<Instant>,
) -> std::thread::JoinHandle<Option<Result<(), String>>> {
    let socket = home.socket.clone();
    let token = token.to_owned();
    std::thread::spawn(move || {
        let deadline = Instant::now() + WAIT;
        let client = loop {
            if stop.load(Ordering::Acquire) || Instant::now() > deadline {
                return None;
            }
            if std::os::unix::net::UnixStream::connect(&socket).is_ok()
                && let Ok(c) = regent_client::blocking::Client::connect(
                    regent_client::ClientOptions::new("crash-enroll")
                        .socket(&socket)
                        .request_timeout(Duration::from_secs(60)),
                )
            {
                break c;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let _ = started.send(Instant::now());
        Some(
            client
                .enroll(token, false)
                .map(|_| ())
                .map_err(|e| format!("{} ({})", e.message, e.code)),
        )
    })
}

/// Asks for tokens until `stop`, so the engine renews ahead all the time.
pub(crate) fn demand_in_background(
    home: &Home,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    let socket = home.socket.clone();
    std::thread::spawn(move || {
        let mut served = 0;
        let Ok(client) = regent_client::blocking::Client::connect(
            regent_client::ClientOptions::new("crash-demand")
                .socket(&socket)
                .request_timeout(Duration::from_secs(60)),
        ) else {
            return 0;
        };
        while !stop.load(Ordering::Acquire) {
            if client.token(Duration::from_secs(1)).is_ok() {
                served += 1;
            } else {
                // The agent is gone (killed): nothing more to ask.
                return served;
            }
            std::thread::sleep(Duration::from_millis(30));
        }
        served
    })
}

/// Kills the agent, then restarts it and checks every invariant.
pub(crate) fn run_iteration(ctx: &Ctx, plan: &Plan) -> (String, Outcome) {
    let emulator = EmulatorProc::start(LIFESPAN);
    // The secret `regent enroll` takes: a registration token, or a client secret.
    let token = if plan.oauth2 {
        let secret = format!("crash-secret-{:x}", Rng::seed_from_env("-"));
        emulator.create_oauth2_client(OAUTH2_CLIENT, &secret, LIFESPAN, plan.rotate);
        secret
    } else {
        emulator.set_rotation(plan.rotate);
        emulator.mint(COUNT)
    };
    let home = home_for(ctx, &emulator, plan.store, plan.oauth2);
    let mut detail = String::new();

    match &plan.kill {
        Kill::EnrollPoint(point) => {
            let agent = home.spawn(Some(point));
            let stop = Arc::new(AtomicBool::new(false));
            let (tx, _rx) = std::sync::mpsc::channel();
            let enroll = enroll_in_background(&home, &token, Arc::clone(&stop), tx);
            match kill_at_point(agent, point, &stop) {
                Ok(what) => detail = what,
                Err(failed) => return (detail, failed),
            }
            if let Some(Ok(())) = enroll.join().unwrap() {
                return (
                    detail,
                    Outcome::Failed("enroll succeeded although the agent stopped mid-way".into()),
                );
            }
        }
        Kill::EnrollAfter(fraction) => {
            let agent = home.start(None);
            let stop = Arc::new(AtomicBool::new(false));
            let (tx, rx) = std::sync::mpsc::channel();
            let enroll = enroll_in_background(&home, &token, stop, tx);
            let began = rx.recv_timeout(WAIT).expect("the enrollment started");
            let delay = ctx.calibration.get(plan.store).mul_f64(*fraction);
            std::thread::sleep(delay.saturating_sub(began.elapsed()));
            agent.kill();
            let finished = matches!(enroll.join().unwrap(), Some(Ok(())));
            detail = format!(
                " [{} ms{}]",
                delay.as_millis(),
                if finished { ", after it finished" } else { "" }
            );
        }
        Kill::RenewPoint(point) => {
            enroll_first(&home, &token);
            let agent = home.start(Some(point));
            let stop = Arc::new(AtomicBool::new(false));
            let demand = demand_in_background(&home, Arc::clone(&stop));
            match kill_at_point(agent, point, &stop) {
                Ok(what) => detail = what,
                Err(failed) => return (detail, failed),
            }
            demand.join().unwrap();
        }
        Kill::RenewAfter(delay) => {
            enroll_first(&home, &token);
            let agent = home.start(None);
            let stop = Arc::new(AtomicBool::new(false));
            let demand = demand_in_background(&home, Arc::clone(&stop));
            std::thread::sleep(*delay);
            agent.kill();
            stop.store(true, Ordering::Release);
            demand.join().unwrap();
        }
    }

    // What the server did before the restart, and what the agent persisted.
    let refreshes_at_kill = emulator.counters()["refreshes"].as_u64().unwrap();
    let persisted_renewals: usize = home
        .logs()
        .iter()
        .map(|log| log.matches("access token renewed").count())
        .sum();

    let agent = home.start(None);
    let outcome = verify(
        &emulator,
        &home,
        &token,
        plan,
        refreshes_at_kill,
        persisted_renewals,
    );
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(why) => {
            let logs = home.logs().join("\n----- next agent log -----\n");
            Outcome::Failed(format!("{why}\nagent logs:\n{logs}"))
        }
    };
    let status = agent.terminate();
    if matches!(outcome, Outcome::Failed(_)) {
        return (detail, outcome);
    }
    if !status.success() {
        return (
            detail,
            Outcome::Failed(format!(
                "the restarted agent exited with {status} on SIGTERM"
            )),
        );
    }
    // The files, once no write is in flight: whole, nothing pending, nothing left over.
    if let Err(why) = check_files(&home, plan) {
        return (detail, Outcome::Failed(why));
    }
    (detail, outcome)
}

/// An unarmed first enrollment, then a clean stop.
pub(crate) fn enroll_first(home: &Home, token: &str) {
    let agent = home.start(None);
    home.client().enroll(token.to_owned(), false).unwrap();
    assert!(agent.terminate().success());
}

pub(crate) fn slot0(home: &Home) -> serde_json::Value {
    home.slot0()
}

/// Waits until `done(slot 0)` holds; `Err` after the timeout.
pub(crate) fn wait_slot(
    home: &Home,
    what: &str,
    timeout: Duration,
    mut done: impl FnMut(&serde_json::Value) -> bool,
) -> Result<serde_json::Value, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = slot0(home);
        if done(&s) {
            return Ok(s);
        }
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}; slot 0: {s}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) fn state_of(s: &serde_json::Value) -> &str {
    s["state"].as_str().unwrap_or("?")
}

/// Waits until the agent stops at `point` (then tells the load to stop and
/// kills it); returns what the agent was doing there, for the report.
pub(crate) fn kill_at_point(
    mut agent: regent_tests::AgentProc,
    point: &str,
    stop: &AtomicBool,
) -> Result<String, Outcome> {
    let name = point.split('@').next().unwrap();
    let line = wait_for_crash_point(&mut agent, name, WAIT);
    stop.store(true, Ordering::Release);
    let Some(line) = line else {
        let log = agent.log_text();
        agent.kill();
        return Err(Outcome::Failed(format!(
            "crash point {point} was never reached; log:\n{log}"
        )));
    };
    agent.kill();
    Ok(line
        .split_once(" reached (")
        .map(|(_, what)| format!(" ({}", what.trim()))
        .unwrap_or_default())
}
