//! Instance leases (DESIGN §8, `instances.mode = "per-instance"`).
//!
//! An app instance leases a slot on its first token request; the lease lives as long as
//! its connection, plus `instances.lease_grace` so a restarting app (same app
//! name and instance id) gets its slot back. A lease whose process is gone
//! (Linux: no `/proc/PID`) and that named no instance id is freed at once: no
//! one could reclaim it. Slots at or above `instances.max` are never leased
//! anew, so lowering `max` takes effect as leases end.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use regent_proto::status::Holder;

#[derive(Debug, Default)]
struct SlotLease {
    holder: Option<(u64, Holder)>,
    /// The last holder and when it let go, for the grace period.
    released: Option<(Holder, Instant)>,
}

/// Every slot's lease.
#[derive(Debug)]
pub struct LeaseTable {
    slots: Mutex<Vec<SlotLease>>,
    grace: Duration,
    next_id: Mutex<u64>,
}

/// A held lease; dropping it releases the slot (into its grace period).
#[derive(Debug)]
pub struct Lease {
    table: Arc<LeaseTable>,
    slot: u32,
    id: u64,
}

impl Lease {
    /// The leased slot.
    pub fn slot(&self) -> u32 {
        self.slot
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.table.release(self.slot, self.id);
    }
}

/// Why no slot could be leased: every one is held (or in its grace period).
#[derive(Debug, Clone)]
pub struct AllLeased {
    /// How many slots there are.
    pub slots: u32,
    /// Who holds them.
    pub holders: Vec<(u32, Holder)>,
}

fn process_gone(pid: Option<u32>) -> bool {
    match pid {
        Some(pid) if cfg!(target_os = "linux") => {
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
        }
        _ => false,
    }
}

impl LeaseTable {
    /// A table whose released leases are kept for `grace`.
    pub fn new(grace: Duration) -> Arc<LeaseTable> {
        Arc::new(LeaseTable {
            slots: Mutex::new(Vec::new()),
            grace,
            next_id: Mutex::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Vec<SlotLease>> {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Leases a slot below `max` for `holder`: first the slot this app
    /// instance held before (restart within the grace period), then a free
    /// slot that `enrolled` says already holds a credential (no new
    /// redemption), then any free slot.
    ///
    /// # Errors
    /// [`AllLeased`] when every slot below `max` is held or reserved.
    pub fn acquire(
        self: &Arc<Self>,
        holder: Holder,
        max: u32,
        enrolled: impl Fn(u32) -> bool,
    ) -> Result<Lease, AllLeased> {
        let now = Instant::now();
        let mut slots = self.lock();
        if slots.len() < max as usize {
            slots.resize_with(max as usize, SlotLease::default);
        }
        let free = |s: &SlotLease| {
            s.holder.is_none()
                && match &s.released {
                    None => true,
                    Some((last, at)) => {
                        now.duration_since(*at) >= self.grace
                            || (last.instance.is_none() && process_gone(last.pid))
                    }
                }
        };
        let reclaim = slots.iter().take(max as usize).position(|s| {
            s.holder.is_none()
                && s.released.as_ref().is_some_and(|(last, at)| {
                    last.app == holder.app
                        && last.instance == holder.instance
                        && now.duration_since(*at) < self.grace
                })
        });
        // The same instance (app and instance id) still holding a slot through
        // a connection of its own process, or of a process that is gone: it
        // reconnected before the agent saw the old connection close (or it
        // restarted). It takes its slot over; the old lease's release then
        // matches nothing. A live *other* process naming the same instance
        // is not given the slot.
        let takeover = || {
            holder.instance.as_ref()?;
            slots.iter().take(max as usize).position(|s| {
                s.holder.as_ref().is_some_and(|(_, current)| {
                    current.app == holder.app
                        && current.instance == holder.instance
                        && (current.pid == holder.pid && holder.pid.is_some()
                            || process_gone(current.pid))
                })
            })
        };
        let chosen = reclaim
            .or_else(takeover)
            .or_else(|| (0..max as usize).find(|&i| free(&slots[i]) && enrolled(i as u32)))
            .or_else(|| (0..max as usize).find(|&i| free(&slots[i])));
        let Some(index) = chosen else {
            let holders = slots
                .iter()
                .enumerate()
                .filter_map(|(i, s)| {
                    s.holder
                        .as_ref()
                        .map(|(_, h)| h.clone())
                        .or_else(|| s.released.as_ref().map(|(h, _)| h.clone()))
                        .map(|h| (i as u32, h))
                })
                .collect();
            return Err(AllLeased {
                slots: max,
                holders,
            });
        };
        let id = {
            let mut next = self
                .next_id
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *next += 1;
            *next
        };
        slots[index].holder = Some((id, holder));
        slots[index].released = None;
        Ok(Lease {
            table: Arc::clone(self),
            slot: index as u32,
            id,
        })
    }

    fn release(&self, slot: u32, id: u64) {
        let mut slots = self.lock();
        if let Some(s) = slots.get_mut(slot as usize)
            && s.holder.as_ref().is_some_and(|(held, _)| *held == id)
            && let Some((_, holder)) = s.holder.take()
        {
            s.released = Some((holder, Instant::now()));
        }
    }

    /// Current holders, by slot.
    pub fn holders(&self) -> Vec<(u32, Holder)> {
        self.lock()
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.holder.as_ref().map(|(_, h)| (i as u32, h.clone())))
            .collect()
    }

    /// Forgets every lease's grace reservation (unenroll).
    pub fn clear_reservations(&self) {
        for s in self.lock().iter_mut() {
            s.released = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn an_instance_reconnecting_before_its_old_connection_closed_takes_its_slot_over() {
        let table = LeaseTable::new(Duration::from_secs(10));
        let me = std::process::id();
        let holder = |instance: &str, pid: u32| Holder {
            app: "app".into(),
            instance: Some(instance.into()),
            pid: Some(pid),
        };
        let old = table.acquire(holder("a", me), 1, |_| true).unwrap();
        // The same process, the same instance: the old lease is still held.
        let new = table.acquire(holder("a", me), 1, |_| true).unwrap();
        assert_eq!(new.slot(), old.slot());
        // The old connection's close releases nothing: the new one holds it.
        drop(old);
        assert_eq!(table.holders().len(), 1);
        // Another live process naming the same instance gets nothing.
        let parent = std::os::unix::process::parent_id();
        assert!(table.acquire(holder("a", parent), 1, |_| true).is_err());
        // Nor does another instance of the same process.
        assert!(table.acquire(holder("b", me), 1, |_| true).is_err());
        drop(new);
        assert!(table.holders().is_empty());
    }

    fn app(name: &str, instance: Option<&str>) -> Holder {
        Holder {
            app: name.into(),
            instance: instance.map(str::to_owned),
            pid: None,
        }
    }

    #[test]
    fn leases_fill_slots_then_refuse_and_free_on_drop_after_grace() {
        let table = LeaseTable::new(Duration::ZERO);
        let a = table.acquire(app("x", None), 2, |_| false).unwrap();
        let b = table.acquire(app("x", None), 2, |_| false).unwrap();
        assert_ne!(a.slot(), b.slot());
        let full = table.acquire(app("y", None), 2, |_| false).unwrap_err();
        assert_eq!(full.slots, 2);
        assert_eq!(full.holders.len(), 2);
        let freed = a.slot();
        drop(a);
        let c = table.acquire(app("y", None), 2, |_| false).unwrap();
        assert_eq!(c.slot(), freed);
    }

    #[test]
    fn grace_keeps_the_slot_for_the_same_instance() {
        let table = LeaseTable::new(Duration::from_secs(60));
        let a = table
            .acquire(app("editor", Some("doc-1")), 2, |_| false)
            .unwrap();
        let slot = a.slot();
        drop(a);
        // Another app cannot take the reserved slot...
        let other = table.acquire(app("other", None), 2, |_| false).unwrap();
        assert_ne!(other.slot(), slot);
        // ...and with both slots taken or reserved, a third is refused.
        assert!(table.acquire(app("third", None), 2, |_| false).is_err());
        // The same instance gets its slot back.
        let again = table
            .acquire(app("editor", Some("doc-1")), 2, |_| false)
            .unwrap();
        assert_eq!(again.slot(), slot);
    }

    #[test]
    fn enrolled_slots_are_preferred_and_max_bounds_new_leases() {
        let table = LeaseTable::new(Duration::ZERO);
        let l = table.acquire(app("x", None), 3, |s| s == 2).unwrap();
        assert_eq!(l.slot(), 2, "a slot that already holds a credential first");
        let l0 = table.acquire(app("x", None), 3, |_| false).unwrap();
        assert_eq!(l0.slot(), 0);
        // max lowered to 1: slot 2 stays leased, nothing new above max.
        assert!(table.acquire(app("x", None), 1, |_| true).is_err());
        drop(l0);
        assert_eq!(
            table.acquire(app("x", None), 1, |_| true).unwrap().slot(),
            0
        );
    }

    #[test]
    fn a_dead_anonymous_holder_frees_its_slot_at_once() {
        let table = LeaseTable::new(Duration::from_secs(3600));
        let mut holder = app("x", None);
        holder.pid = Some(u32::MAX - 1); // no such process
        let l = table.acquire(holder, 1, |_| false).unwrap();
        drop(l);
        if cfg!(target_os = "linux") {
            assert!(table.acquire(app("y", None), 1, |_| false).is_ok());
        }
    }
}
