//! Time: hybrid logical clock stamps.
//!
//! A [`Time`] is `(ms, logical, node)`: physical milliseconds, a counter
//! that orders stamps within one millisecond, and the id of the node that
//! made it. Times order by those three fields in turn, so they are totally
//! ordered across nodes, and unique because each node's [`Hlc`] never
//! hands out the same `(ms, logical)` twice.
//!
//! The clock never reads the system time: the caller passes the wall time
//! in (`wall_ms`), which keeps the engine deterministic.

use std::fmt;

/// The id of a node; the last tiebreak of [`Time`]'s order.
pub type NodeId = u32;

/// A hybrid logical clock stamp. `Time::ZERO` means "never written"
/// (the `seen` of a read of an absent path).
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time {
    /// Physical milliseconds since the Unix epoch (or any fixed origin).
    pub ms: u64,
    /// Orders stamps made within the same millisecond.
    pub logical: u32,
    /// The node that made the stamp.
    pub node: NodeId,
}

impl Time {
    /// Before every real stamp: "never written".
    pub const ZERO: Time = Time {
        ms: 0,
        logical: 0,
        node: 0,
    };

    /// The largest wall time the clock accepts, in ms (about year 10889).
    /// Larger inputs are clamped so the counter can never wrap.
    pub const MAX_MS: u64 = 1 << 48;

    /// A stamp at `ms` with no logical part, from node 0: the earliest
    /// stamp of that millisecond. Used for horizons ("everything before
    /// this ms").
    pub const fn from_ms(ms: u64) -> Time {
        Time {
            ms,
            logical: 0,
            node: 0,
        }
    }

    /// True for [`Time::ZERO`].
    pub fn is_zero(&self) -> bool {
        *self == Time::ZERO
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}@{}", self.ms, self.logical, self.node)
    }
}

impl fmt::Debug for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Time({self})")
    }
}

/// Why the clock refused a remote stamp.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HlcError {
    /// A remote stamp further ahead of our wall clock than the allowed
    /// drift: taking it would drag our clock into the future.
    #[error(
        "remote time {remote} is {ahead_ms} ms ahead of local wall time; the allowed drift is {max_drift_ms} ms (check the clocks of both nodes)"
    )]
    TooFarAhead {
        /// The stamp that was refused.
        remote: Time,
        /// How far ahead it was.
        ahead_ms: u64,
        /// The configured limit (config `clock.max_drift_ms`).
        max_drift_ms: u64,
    },
}

/// A hybrid logical clock for one node.
///
/// Invariant: every stamp [`Hlc::now`] returns is strictly greater than
/// every stamp it returned before and than every stamp passed to
/// [`Hlc::observe`] or [`Hlc::resume`], whatever the wall-clock input does
/// (it may go backwards or stand still).
#[derive(Clone, Debug)]
pub struct Hlc {
    node: NodeId,
    /// The largest `(ms, logical)` handed out or observed.
    last_ms: u64,
    last_logical: u32,
    max_drift_ms: u64,
}

impl Hlc {
    /// Default for [`Hlc::with_max_drift`]: how far a remote stamp may be
    /// ahead of our wall clock.
    pub const DEFAULT_MAX_DRIFT_MS: u64 = 60_000;

    /// A clock for `node` that has handed out nothing yet.
    pub fn new(node: NodeId) -> Hlc {
        Hlc {
            node,
            last_ms: 0,
            last_logical: 0,
            max_drift_ms: Hlc::DEFAULT_MAX_DRIFT_MS,
        }
    }

    /// A clock for `node` after a restart: every stamp it hands out is
    /// greater than `newest`, the newest time in the log (which another
    /// node may have made).
    pub fn resume(node: NodeId, newest: Time) -> Hlc {
        let mut hlc = Hlc::new(node);
        hlc.raise_to(newest);
        hlc
    }

    /// Sets the allowed drift of remote stamps (config
    /// `clock.max_drift_ms`).
    pub fn with_max_drift(mut self, max_drift_ms: u64) -> Hlc {
        self.max_drift_ms = max_drift_ms;
        self
    }

    /// This clock's node id.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// A new stamp, strictly greater than any before, given the current
    /// wall time.
    pub fn now(&mut self, wall_ms: u64) -> Time {
        let wall_ms = wall_ms.min(Time::MAX_MS);
        if wall_ms > self.last_ms {
            self.last_ms = wall_ms;
            self.last_logical = 0;
        } else if self.last_logical == u32::MAX {
            // 2^32 stamps in one millisecond: borrow the next millisecond.
            // (Saturating: only a `resume` from a time near u64::MAX, which
            // no checked input reaches, could get there.)
            self.last_ms = self.last_ms.saturating_add(1);
            self.last_logical = 0;
        } else {
            self.last_logical += 1;
        }
        Time {
            ms: self.last_ms,
            logical: self.last_logical,
            node: self.node,
        }
    }

    /// Takes in a stamp from another node, so later local stamps order
    /// after it. Refuses stamps too far ahead of `wall_ms`.
    pub fn observe(&mut self, remote: Time, wall_ms: u64) -> Result<(), HlcError> {
        let ahead_ms = remote.ms.saturating_sub(wall_ms.min(Time::MAX_MS));
        if ahead_ms > self.max_drift_ms || remote.ms > Time::MAX_MS {
            return Err(HlcError::TooFarAhead {
                remote,
                ahead_ms,
                max_drift_ms: self.max_drift_ms,
            });
        }
        self.raise_to(remote);
        Ok(())
    }

    /// The newest `(ms, logical)` this clock has handed out or observed,
    /// with this node's id.
    pub fn last(&self) -> Time {
        Time {
            ms: self.last_ms,
            logical: self.last_logical,
            node: self.node,
        }
    }

    fn raise_to(&mut self, t: Time) {
        // Our next stamp must beat `t` whatever the node ids are, so we
        // compare (ms, logical) only: equal pairs from another node are
        // passed by the next increment.
        if (t.ms, t.logical) > (self.last_ms, self.last_logical) {
            self.last_ms = t.ms;
            self.last_logical = t.logical;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backwards_wall_clock_still_increases() {
        let mut hlc = Hlc::new(7);
        let a = hlc.now(1000);
        let b = hlc.now(900);
        let c = hlc.now(1000);
        let d = hlc.now(1001);
        assert!(a < b && b < c && c < d);
        assert_eq!(b.ms, 1000);
        assert_eq!(
            d,
            Time {
                ms: 1001,
                logical: 0,
                node: 7
            }
        );
    }

    #[test]
    fn logical_overflow_borrows_next_ms() {
        let mut hlc = Hlc::resume(
            1,
            Time {
                ms: 5,
                logical: u32::MAX,
                node: 1,
            },
        );
        let t = hlc.now(5);
        assert_eq!((t.ms, t.logical), (6, 0));
    }

    #[test]
    fn refuses_remote_stamps_from_the_far_future() {
        let mut hlc = Hlc::new(1).with_max_drift(100);
        let far = Time {
            ms: 10_000,
            logical: 0,
            node: 2,
        };
        assert!(matches!(
            hlc.observe(far, 1000),
            Err(HlcError::TooFarAhead { ahead_ms: 9000, .. })
        ));
        assert!(hlc.now(1000) < far);
        let near = Time {
            ms: 1050,
            logical: 3,
            node: 2,
        };
        hlc.observe(near, 1000).unwrap();
        assert!(hlc.now(1000) > near);
    }
}
