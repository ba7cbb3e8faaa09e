//! The rollout's batches: a pure function of the `rollout` block and the
//! host names, in declaration order. In: [`Rollout`] and the hosts; out:
//! the batches in order (the canary first). Guarantees: every host is in
//! exactly one batch, no batch is empty, the order is the hosts' order.

use serde::{Deserialize, Serialize};

use crate::config::{BatchSize, Rollout};

/// One step of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// `canary` or `batch`.
    pub kind: BatchKind,
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BatchKind {
    Canary,
    Batch,
}

/// How many hosts a batch size covers, cumulatively, in a fleet of `n`:
/// a count as is, a percentage of the whole fleet rounded up.
pub fn cumulative(size: BatchSize, n: usize) -> usize {
    match size {
        BatchSize::Count(c) => usize::try_from(c).unwrap_or(usize::MAX),
        BatchSize::Percent(p) => {
            let p = usize::try_from(p.min(100)).unwrap_or(100);
            (n * p).div_ceil(100)
        }
    }
}

/// The batches of a rollout over `hosts`: the first `canary` hosts alone,
/// then each batch size as a cumulative count over the whole fleet (a
/// size the rollout already reached adds nothing and is skipped), and
/// whatever the last size leaves for a final batch.
pub fn batches(rollout: &Rollout, hosts: &[String]) -> Vec<Batch> {
    let n = hosts.len();
    let mut out = Vec::new();
    let canary = usize::try_from(rollout.canary).unwrap_or(usize::MAX).min(n);
    if canary > 0 {
        out.push(Batch {
            kind: BatchKind::Canary,
            hosts: hosts[..canary].to_vec(),
        });
    }
    let mut done = canary;
    for size in &rollout.batches {
        let upto = cumulative(*size, n).min(n);
        if upto > done {
            out.push(Batch {
                kind: BatchKind::Batch,
                hosts: hosts[done..upto].to_vec(),
            });
            done = upto;
        }
    }
    if done < n {
        out.push(Batch {
            kind: BatchKind::Batch,
            hosts: hosts[done..].to_vec(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rollout(canary: u32, batches: &[BatchSize]) -> Rollout {
        Rollout {
            canary,
            batches: batches.to_vec(),
            max_fail: 0,
            pause: Duration::ZERO,
            connections: 8,
        }
    }

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("h{i}")).collect()
    }

    fn shape(b: &[Batch]) -> Vec<(BatchKind, usize)> {
        b.iter().map(|b| (b.kind, b.hosts.len())).collect()
    }

    #[test]
    fn batch_table() {
        use BatchKind::{Batch as B, Canary as C};
        use BatchSize::{Count, Percent};
        for (canary, sizes, n, want) in [
            (0, vec![Percent(100)], 3, vec![(B, 3)]),
            (0, vec![Count(1), Percent(100)], 3, vec![(B, 1), (B, 2)]),
            (1, vec![Percent(100)], 5, vec![(C, 1), (B, 4)]),
            (
                1,
                vec![Percent(25), Percent(100)],
                8,
                vec![(C, 1), (B, 1), (B, 6)],
            ),
            // A size the canary already covers adds nothing.
            (1, vec![Count(1), Percent(100)], 3, vec![(C, 1), (B, 2)]),
            (0, vec![Count(2), Count(4)], 5, vec![(B, 2), (B, 2), (B, 1)]),
            (0, vec![Count(10)], 3, vec![(B, 3)]),
            (5, vec![Percent(100)], 3, vec![(C, 3)]),
            (0, vec![Percent(50)], 3, vec![(B, 2), (B, 1)]),
            (0, vec![Percent(100)], 0, vec![]),
        ] {
            let b = batches(&rollout(canary, &sizes), &names(n));
            assert_eq!(shape(&b), want, "canary {canary}, {sizes:?}, {n} hosts");
            let all: Vec<String> = b.iter().flat_map(|b| b.hosts.clone()).collect();
            assert_eq!(all, names(n), "every host once, in order");
        }
    }
}
