//! Subscriptions: tokens pushed before the last one drops below the
//! subscriber's `min_valid`, and slot state changes.

use super::*;

/// `retry_after` for a subscription refused at the agent's limit.
pub(super) const SUBSCRIPTION_RETRY: Duration = Duration::from_secs(10);

pub(super) struct Subscription {
    pub(super) id: u64,
    min_valid: Duration,
    /// Expiry of the last token pushed, to push each token once.
    last_pushed: Option<SystemTime>,
    _demand: DemandGuard,
    /// This subscription's place under `[ipc] max_subscriptions`.
    _permit: OwnedSemaphorePermit,
}

impl Connection<'_> {
    pub(super) async fn subscribe(&mut self, id: u64, min_valid: Duration) {
        if let Err(e) = self.may_fetch_tokens("subscribe") {
            self.reply_error(id, e);
            return;
        }
        let per_connection = self.shared.settings.max_subscriptions_per_connection;
        if self.subscriptions.len() >= per_connection {
            self.reply_error(
                id,
                Error::new(
                    ErrorCode::BadRequest,
                    format!(
                        "this connection already holds {per_connection} subscriptions, the most allowed ([ipc] max_subscriptions_per_connection); unsubscribe first or reuse one subscription"
                    ),
                ),
            );
            return;
        }
        let Ok(permit) = Arc::clone(&self.shared.subscriptions).try_acquire_owned() else {
            audit!(
                self,
                Level::WARN,
                limit = self.shared.settings.max_subscriptions,
                "subscription refused: the agent's subscription limit is reached"
            );
            self.reply_error(
                id,
                Error::new(
                    ErrorCode::Unavailable,
                    format!(
                        "the agent holds {} subscriptions, the most allowed ([ipc] max_subscriptions); retry later",
                        self.shared.settings.max_subscriptions
                    ),
                )
                .with_retry_after(SUBSCRIPTION_RETRY),
            );
            return;
        };
        if let Err(e) = self.ensure_lease() {
            self.reply_error(id, e);
            return;
        }
        let demand = self.shared.agent.hold_demand_for(self.slot, min_valid);
        if self.events.is_none() {
            self.events = Some(self.shared.agent.events_for(self.slot));
        }
        self.subscriptions.push(Subscription {
            id,
            min_valid,
            last_pushed: None,
            _demand: demand,
            _permit: permit,
        });
        let index = self.subscriptions.len() - 1;
        self.reply(id, Reply::Subscribed {});
        // The current token right away (or why there is none).
        match self.shared.agent.token_for(self.slot, min_valid).await {
            Ok(grant) => self.push_token(index, &grant),
            Err(e) => {
                let state = self.shared.agent.engine_status_for(self.slot).state;
                self.push_state(id, state, Some(e));
            }
        }
    }

    /// Pushes `grant` to the subscription at `index` unless it already has it.
    pub(super) fn push_token(&mut self, index: usize, grant: &Grant) {
        let Some(sub) = self.subscriptions.get_mut(index) else {
            return;
        };
        if sub.last_pushed == Some(grant.expires_at) {
            return;
        }
        sub.last_pushed = Some(grant.expires_at);
        let (id, min_valid) = (sub.id, sub.min_valid);
        self.audit_handout(grant, "subscription", min_valid);
        self.push(Response {
            id,
            outcome: Outcome::Event(WireEvent::Token(token_reply(grant))),
        });
    }

    pub(super) fn push_state(&mut self, id: u64, state: SlotState, error: Option<Error>) {
        let error = error.map(|e| {
            let mut w = WireError::new(e.code, e.message);
            w.retry_after_ms = e
                .retry_after
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            w
        });
        self.push(Response {
            id,
            outcome: Outcome::Event(WireEvent::State {
                state: state.as_str().to_owned(),
                error,
            }),
        });
    }

    pub(super) async fn on_event(&mut self, event: Option<Event>) {
        if let Err(e) = self.recheck_policy() {
            self.reply_error(0, e);
            return;
        }
        let renewed = match event {
            Some(Event::State { to, error, .. }) => {
                let ids: Vec<u64> = self.subscriptions.iter().map(|s| s.id).collect();
                for id in ids {
                    self.push_state(id, to, error.clone());
                }
                to == SlotState::Active
            }
            // A lagged receiver missed events: re-push what is current.
            Some(Event::Renewed { .. }) | None => true,
        };
        if renewed {
            // One engine call per distinct min_valid, not per subscription:
            // fan-out stays linear in the number of subscriptions.
            let mut answers: HashMap<Duration, Option<Arc<Grant>>> = HashMap::new();
            for index in 0..self.subscriptions.len() {
                let min_valid = self.subscriptions[index].min_valid;
                let grant = match answers.get(&min_valid) {
                    Some(answer) => answer.clone(),
                    None => {
                        let answer = self.shared.agent.token_for(self.slot, min_valid).await.ok();
                        answers.insert(min_valid, answer.clone());
                        answer
                    }
                };
                if let Some(grant) = grant {
                    self.push_token(index, &grant);
                }
            }
        }
    }
}

/// The next engine event; `None` when the receiver lagged. Pending forever
/// when there are no subscriptions.
pub(super) async fn next_event(events: Option<&mut broadcast::Receiver<Event>>) -> Option<Event> {
    let Some(events) = events else {
        return std::future::pending().await;
    };
    loop {
        match events.recv().await {
            Ok(e) => return Some(e),
            Err(broadcast::error::RecvError::Lagged(_)) => return None,
            Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}
