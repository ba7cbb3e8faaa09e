//! The rollout's batches: a pure function of the `rollout` block and the
//! host names, in declaration order. In: [`Rollout`] and the hosts; out:
//! the batches in order (the canary first). Guarantees: every host is in
//! exactly one batch, no batch is empty, the order is the hosts' order.

use serde::{Deserialize, Serialize};

use crate::config::Rollout;

/// One step of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Batch {
    /// `canary` or `batch`.
    pub(crate) kind: BatchKind,
    pub(crate) hosts: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum BatchKind {
    Canary,
    Batch,
}

/// The batches of a rollout over `hosts`, in order: the sizes of
/// [`Rollout::steps`] (the canary first, then each batch size, the last
/// one repeating; docs/config.md) laid over the hosts in their order.
pub(crate) fn batches(rollout: &Rollout, hosts: &[String]) -> Vec<Batch> {
    let mut out = Vec::new();
    let mut done = 0;
    for (i, size) in rollout.steps(hosts.len()).into_iter().enumerate() {
        let upto = (done + size).min(hosts.len());
        if upto == done {
            continue;
        }
        out.push(Batch {
            kind: if i == 0 && rollout.canary > 0 {
                BatchKind::Canary
            } else {
                BatchKind::Batch
            },
            hosts: hosts[done..upto].to_vec(),
        });
        done = upto;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BatchSize;
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
            // docs/config.md's table.
            (
                1,
                vec![Percent(25), Percent(100)],
                5,
                vec![(C, 1), (B, 2), (B, 2)],
            ),
            (
                1,
                vec![Count(1), Count(2)],
                5,
                vec![(C, 1), (B, 1), (B, 2), (B, 1)],
            ),
            (0, vec![Count(2)], 5, vec![(B, 2), (B, 2), (B, 1)]),
            (
                1,
                vec![Count(1), Percent(100)],
                3,
                vec![(C, 1), (B, 1), (B, 1)],
            ),
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
