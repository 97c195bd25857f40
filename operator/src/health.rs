//! What `/readyz` answers. A replica is ready while it waits for the Lease as a standby (so it
//! does not hold up a rollout) and, as the one that reconciles, once its watches have synced;
//! before that its view of the cluster is partial.

use std::sync::atomic::{AtomicU8, Ordering};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Connecting to the API server.
    Starting = 0,
    /// Waiting for the Lease; another replica reconciles.
    Standby = 1,
    /// Running the controller; the caches are still being filled.
    Syncing = 2,
    /// Running the controller on synced caches.
    Serving = 3,
}

impl Phase {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Standby,
            2 => Self::Syncing,
            3 => Self::Serving,
            _ => Self::Starting,
        }
    }

    pub fn is_ready(self) -> bool {
        matches!(self, Self::Standby | Self::Serving)
    }

    /// The body of `/readyz`.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Starting => "not ready: connecting to the API server",
            Self::Standby => "ready: standby, waiting for the lease",
            Self::Syncing => "not ready: watches not synced yet",
            Self::Serving => "ready: watches synced",
        }
    }
}

/// The replica's phase, shared by the controller, leader election and the HTTP endpoints.
#[derive(Debug, Default)]
pub struct Health(AtomicU8);

impl Health {
    pub fn set(&self, phase: Phase) {
        self.0.store(phase as u8, Ordering::Relaxed);
    }

    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.0.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_as_standby_or_on_synced_caches() {
        let h = Health::default();
        assert_eq!(h.phase(), Phase::Starting);
        for (phase, ready) in [
            (Phase::Starting, false),
            (Phase::Standby, true),
            (Phase::Syncing, false),
            (Phase::Serving, true),
        ] {
            h.set(phase);
            assert_eq!(h.phase(), phase);
            assert_eq!(phase.is_ready(), ready, "{phase:?}");
        }
    }
}
