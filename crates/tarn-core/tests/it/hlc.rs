//! Property tests of the hybrid logical clock with arbitrary wall-clock
//! inputs, backwards jumps, remote stamps and restarts.

use proptest::prelude::*;
use tarn_core::{Hlc, Time};

#[derive(Clone, Debug)]
enum Step {
    /// Stamp with this wall time.
    Now(u64),
    /// Receive a stamp from another node.
    Observe {
        ms: u64,
        logical: u32,
        node: u32,
        wall: u64,
    },
    /// Restart from the newest stamp seen.
    Restart,
}

fn wall() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..2_000,             // small values, lots of ties and backward jumps
        Just(u64::MAX),          // absurd inputs are clamped, never overflow
        (1u64 << 47)..(1 << 49), // around the clamp
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => wall().prop_map(Step::Now),
        2 => (0u64..2_500, any::<u32>(), 0u32..4, 0u64..2_000)
            .prop_map(|(ms, logical, node, wall)| Step::Observe { ms, logical, node, wall }),
        1 => Just(Step::Restart),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(crate::support::cases(512)))]

    /// Every stamp is strictly greater than every stamp made or observed
    /// before it, and never behind the wall clock (below the clamp).
    #[test]
    fn stamps_strictly_increase(steps in prop::collection::vec(step(), 1..200)) {
        let node = 2;
        let mut hlc = Hlc::new(node).with_max_drift(1_000);
        let mut newest = Time::ZERO;
        for s in steps {
            match s {
                Step::Now(wall) => {
                    let t = hlc.now(wall);
                    prop_assert!(t > newest, "{t} not after {newest}");
                    prop_assert_eq!(t.node, node);
                    prop_assert!(t.ms >= wall.min(Time::MAX_MS));
                    newest = t;
                }
                Step::Observe { ms, logical, node: n, wall } => {
                    let remote = Time { ms, logical, node: n };
                    match hlc.observe(remote, wall) {
                        Ok(()) => newest = newest.max(remote),
                        Err(_) => prop_assert!(ms > wall + 1_000),
                    }
                }
                Step::Restart => {
                    hlc = Hlc::resume(node, newest).with_max_drift(1_000);
                }
            }
        }
    }

    /// Stamps of different nodes are totally ordered and never equal.
    #[test]
    fn nodes_never_collide(walls in prop::collection::vec(0u64..50, 1..100)) {
        let mut a = Hlc::new(1);
        let mut b = Hlc::new(2);
        let mut all = Vec::new();
        for w in walls {
            all.push(a.now(w));
            all.push(b.now(w));
        }
        let n = all.len();
        all.sort();
        all.dedup();
        prop_assert_eq!(all.len(), n);
    }
}
