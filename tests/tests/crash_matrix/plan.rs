//! The plan: which store, profile and rotation, and where the agent is killed
//! (a named crash point or a random delay), from a printed seed.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Store {
    File,
    Keychain,
}

#[derive(Debug, Clone)]
pub(crate) enum Kill {
    /// A named point (`name` or `name@n`) during the first enrollment.
    EnrollPoint(String),
    /// A named point during the n-th renewal after a restart.
    RenewPoint(String),
    /// SIGKILL after this fraction of a measured enrollment's duration.
    EnrollAfter(f64),
    /// SIGKILL this long after clients started asking for tokens (renewals
    /// every ~0.2 s).
    RenewAfter(Duration),
}

#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) kill: Kill,
    pub(crate) store: Store,
    pub(crate) rotate: bool,
    /// The OAuth2 profile (client credentials) instead of Sentinel.
    pub(crate) oauth2: bool,
}

impl Plan {
    pub(crate) fn renewal(&self) -> bool {
        matches!(self.kill, Kill::RenewPoint(_) | Kill::RenewAfter(_))
    }
    /// Where the kill lands, for the summary.
    pub(crate) fn label(&self) -> String {
        let profile = if self.oauth2 { "oauth2 " } else { "" };
        let kill = match &self.kill {
            Kill::EnrollPoint(p) => format!("enroll {}", p.split('@').next().unwrap()),
            Kill::RenewPoint(p) => format!("renew {}", p.split('@').next().unwrap()),
            Kill::EnrollAfter(_) => "enroll random-time".into(),
            Kill::RenewAfter(_) => "renew random-time".into(),
        };
        format!("{profile}{kill}")
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kill = match &self.kill {
            Kill::EnrollPoint(p) => format!("enroll point {p}"),
            Kill::RenewPoint(p) => format!("renew point {p}"),
            Kill::EnrollAfter(x) => format!("enroll kill at {:.0}% of an enrollment", x * 100.0),
            Kill::RenewAfter(d) => format!("renew kill after {} ms", d.as_millis()),
        };
        write!(
            f,
            "{}{kill}, store={}, rotation={}",
            if self.oauth2 { "oauth2: " } else { "" },
            match self.store {
                Store::File => "file",
                Store::Keychain => "keychain",
            },
            if self.rotate { "on" } else { "off" }
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Outcome {
    /// Back with its credential without anyone doing anything.
    Recovered,
    /// Nothing had reached the server; `regent enroll` was rerun.
    Reenrolled,
    /// The documented limit; recovered by rerunning `regent enroll` (no count).
    KnownLimit,
    Failed(String),
}

impl Outcome {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Outcome::Recovered => "recovered",
            Outcome::Reenrolled => "re-enrolled",
            Outcome::KnownLimit => "known-limit",
            Outcome::Failed(_) => "FAILED",
        }
    }
}

/// How long an enrollment takes here, per store (the median of three measured
/// at the start), for random-time kills.
#[derive(Debug, Default)]
pub(crate) struct Calibration(pub(crate) BTreeMap<Store, Duration>);

impl Calibration {
    pub(crate) fn get(&self, store: Store) -> Duration {
        self.0.get(&store).copied().unwrap_or(match store {
            Store::File => Duration::from_millis(40),
            Store::Keychain => Duration::from_millis(150),
        })
    }
}

pub(crate) struct Ctx {
    pub(crate) keyring: Option<Keyring>,
    pub(crate) calibration: Calibration,
}

pub(crate) fn named_plans(keychain: bool) -> Vec<Plan> {
    let file = |kill: Kill, rotate: bool| Plan {
        kill,
        store: Store::File,
        rotate,
        oauth2: false,
    };
    let mut plans = vec![
        file(Kill::EnrollPoint("before-redeem".into()), true),
        file(Kill::EnrollPoint("after-redeem".into()), true),
        file(Kill::EnrollPoint("after-store".into()), true),
    ];
    for n in 1..=FILE_STORE_ENROLL_WRITES {
        plans.push(file(
            Kill::EnrollPoint(format!("mid-store-write@{n}")),
            true,
        ));
    }
    plans.extend([
        file(Kill::RenewPoint("before-refresh".into()), true),
        file(Kill::RenewPoint("after-refresh".into()), true),
        file(Kill::RenewPoint("after-refresh@2".into()), false),
        // A renewal writes twice: the write-ahead (odd writes), then the
        // renewed credential (even writes).
        file(Kill::RenewPoint("mid-store-write".into()), true),
        file(Kill::RenewPoint("mid-store-write@2".into()), true),
        file(Kill::RenewPoint("mid-store-write@4".into()), false),
    ]);
    let keychain_store = if keychain {
        Store::Keychain
    } else {
        Store::File
    };
    let oauth2 = |kill: Kill, rotate: bool| Plan {
        kill,
        store: Store::File,
        rotate,
        oauth2: true,
    };
    plans.extend([
        oauth2(Kill::EnrollPoint("mid-store-write@3".into()), true),
        oauth2(Kill::RenewPoint("after-refresh".into()), true),
        oauth2(Kill::RenewPoint("mid-store-write".into()), true),
    ]);
    plans.extend([
        Plan {
            kill: Kill::EnrollPoint("after-redeem".into()),
            store: keychain_store,
            rotate: true,
            oauth2: false,
        },
        Plan {
            kill: Kill::EnrollPoint("mid-store-write@2".into()),
            store: keychain_store,
            rotate: true,
            oauth2: false,
        },
        Plan {
            kill: Kill::RenewPoint("after-refresh".into()),
            store: keychain_store,
            rotate: false,
            oauth2: false,
        },
    ]);
    plans
}

pub(crate) fn random_plan(rng: &mut Rng, keychain: bool) -> Plan {
    let store = if keychain && rng.chance(0.35) {
        Store::Keychain
    } else {
        Store::File
    };
    let rotate = rng.chance(0.7);
    let oauth2 = rng.chance(0.2);
    let writes = match (store, oauth2) {
        (Store::File, false) => FILE_STORE_ENROLL_WRITES,
        (Store::Keychain, false) => KEYCHAIN_ENROLL_WRITES,
        (Store::File, true) => OAUTH2_FILE_STORE_ENROLL_WRITES,
        (Store::Keychain, true) => OAUTH2_KEYCHAIN_ENROLL_WRITES,
    };
    let kill = match rng.below(10) {
        0..=2 => {
            // OAuth2 enrollment has no redemption: only its writes.
            let points: &[&str] = if oauth2 {
                &["mid-store-write"]
            } else {
                &[
                    "before-redeem",
                    "after-redeem",
                    "after-store",
                    "mid-store-write",
                ]
            };
            let point = *rng.pick(points);
            if point == "mid-store-write" {
                Kill::EnrollPoint(format!("{point}@{}", 1 + rng.below(writes)))
            } else {
                Kill::EnrollPoint(point.to_owned())
            }
        }
        3..=4 => {
            let mut points = vec!["before-refresh", "after-refresh"];
            if store == Store::File {
                points.push("mid-store-write");
            }
            let point = *rng.pick(&points);
            Kill::RenewPoint(format!("{point}@{}", 1 + rng.below(3)))
        }
        5..=6 => Kill::EnrollAfter(rng.below(1100) as f64 / 1000.0),
        _ => Kill::RenewAfter(Duration::from_millis(rng.below(1200))),
    };
    Plan {
        kill,
        store,
        rotate,
        oauth2,
    }
}

/// The plan of the whole run: the named points first (the quick form adds a
/// few random kills), then random iterations up to the long form's 200.
pub(crate) fn plan(seed: u64, keychain: bool) -> Vec<Plan> {
    let mut rng = Rng::new(seed);
    let mut plans = named_plans(keychain);
    // Random kills in the quick form: two during enrollment, two during renewal.
    plans.push(Plan {
        kill: Kill::EnrollAfter(rng.below(1100) as f64 / 1000.0),
        store: Store::File,
        rotate: true,
        oauth2: false,
    });
    plans.push(Plan {
        kill: Kill::EnrollAfter(rng.below(1100) as f64 / 1000.0),
        store: if keychain {
            Store::Keychain
        } else {
            Store::File
        },
        rotate: true,
        oauth2: false,
    });
    plans.push(Plan {
        kill: Kill::RenewAfter(Duration::from_millis(rng.below(1200))),
        store: Store::File,
        rotate: true,
        oauth2: false,
    });
    plans.push(Plan {
        kill: Kill::RenewAfter(Duration::from_millis(rng.below(1200))),
        store: Store::File,
        rotate: false,
        oauth2: false,
    });
    let total = scale(plans.len(), 200);
    while plans.len() < total {
        plans.push(random_plan(&mut rng, keychain));
    }
    plans
}
