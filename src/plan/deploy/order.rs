//! Stage 4, ordering: the action graph (actions, the edges between them,
//! a sort key each) in, the actions in a topological order out, with
//! `after` filled with each action's direct predecessors. Deterministic:
//! among actions that are ready together, the smallest key (phase, kind,
//! declaration order) goes first; a cycle is an error, never a hang.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};

use petgraph::graph::{DiGraph, NodeIndex};

use super::PlanError;
use crate::plan::{Action, ActionKind};

/// Tie-break of the topological order: phase, kind, declaration order.
pub(super) type SortKey = (usize, ActionKind, usize);

/// What [`order`] does with a cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OnCycle {
    /// Refuse the graph ([`PlanError::Cycle`], naming an action on it).
    Refuse,
    /// Drop the edges that point back to an action added earlier, and
    /// order the rest: for graphs that have no cycle by construction, so
    /// that a bug still gives a plan that runs, never a panic or a hang.
    DropBackEdges,
}

/// The graph of `n` actions and `edges` (self-edges and repeats left out).
fn graph(
    n: usize,
    edges: impl Iterator<Item = (usize, usize)>,
) -> (DiGraph<usize, ()>, Vec<NodeIndex>) {
    let mut g: DiGraph<usize, ()> = DiGraph::with_capacity(n, 0);
    let nodes: Vec<NodeIndex> = (0..n).map(|i| g.add_node(i)).collect();
    let mut seen = BTreeSet::new();
    for (a, b) in edges {
        if a != b && seen.insert((a, b)) {
            g.add_edge(nodes[a], nodes[b], ());
        }
    }
    (g, nodes)
}

/// Topological order with an explicit tie-break (phase, kind, declaration
/// order), and `after` filled with direct predecessors by id.
pub(super) fn order(
    mut actions: Vec<Action>,
    keys: &[(usize, ActionKind, usize)],
    edges: &[(usize, usize)],
    on_cycle: OnCycle,
) -> Result<Vec<Action>, PlanError> {
    let (mut g, mut nodes) = graph(actions.len(), edges.iter().copied());
    if let Err(c) = petgraph::algo::toposort(&g, None) {
        if on_cycle == OnCycle::Refuse {
            let id = actions
                .get(g[c.node_id()])
                .map_or_else(String::new, |a| a.id.clone());
            return Err(PlanError::Cycle(id));
        }
        (g, nodes) = graph(actions.len(), edges.iter().copied().filter(|(a, b)| a < b));
    }
    let mut indegree: Vec<usize> = nodes
        .iter()
        .map(|n| {
            g.neighbors_directed(*n, petgraph::Direction::Incoming)
                .count()
        })
        .collect();
    let mut ready: BinaryHeap<Reverse<(SortKey, usize)>> = BinaryHeap::new();
    for (i, d) in indegree.iter().enumerate() {
        if *d == 0 {
            ready.push(Reverse((keys[i], i)));
        }
    }
    let mut out_order = Vec::with_capacity(actions.len());
    while let Some(Reverse((_, i))) = ready.pop() {
        out_order.push(i);
        for n in g.neighbors_directed(nodes[i], petgraph::Direction::Outgoing) {
            let j = g[n];
            indegree[j] -= 1;
            if indegree[j] == 0 {
                ready.push(Reverse((keys[j], j)));
            }
        }
    }
    let ids: Vec<String> = actions.iter().map(|a| a.id.clone()).collect();
    let position: HashMap<usize, usize> =
        out_order.iter().enumerate().map(|(p, i)| (*i, p)).collect();
    for (i, a) in actions.iter_mut().enumerate() {
        let mut preds: Vec<usize> = g
            .neighbors_directed(nodes[i], petgraph::Direction::Incoming)
            .map(|n| g[n])
            .collect();
        preds.sort_by_key(|p| position.get(p).copied().unwrap_or(usize::MAX));
        a.after = preds.into_iter().map(|p| ids[p].clone()).collect();
    }
    let mut slots: Vec<Option<Action>> = actions.into_iter().map(Some).collect();
    Ok(out_order
        .into_iter()
        .filter_map(|i| slots.get_mut(i).and_then(Option::take))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Step;

    fn action(id: &str) -> Action {
        Action {
            id: id.to_owned(),
            service: None,
            phase: None,
            reason: String::new(),
            after: Vec::new(),
            step: Step::Barrier,
        }
    }

    fn ids(actions: &[Action]) -> Vec<&str> {
        actions.iter().map(|a| a.id.as_str()).collect()
    }

    #[test]
    fn ready_actions_go_by_phase_then_kind_then_declaration() {
        let actions = ["late", "b2", "b1", "build", "after-late"]
            .map(action)
            .to_vec();
        let keys = [
            (1, ActionKind::Build, 0),
            (0, ActionKind::Restart, 2),
            (0, ActionKind::Restart, 1),
            (0, ActionKind::Build, 3),
            (0, ActionKind::Backup, 0),
        ];
        // after-late waits for late although its own key is the smallest;
        // a repeated edge and a self-edge change nothing.
        let edges = [(0, 4), (0, 4), (2, 2)];
        let got = order(actions, &keys, &edges, OnCycle::Refuse).unwrap();
        assert_eq!(ids(&got), ["build", "b1", "b2", "late", "after-late"]);
        assert_eq!(got[4].after, ["late"]);
        assert!(got[..4].iter().all(|a| a.after.is_empty()));
    }

    #[test]
    fn after_lists_predecessors_in_plan_order() {
        let actions = ["join", "second", "first"].map(action).to_vec();
        let keys = [
            (0, ActionKind::Barrier, 0),
            (0, ActionKind::Build, 2),
            (0, ActionKind::Build, 1),
        ];
        let got = order(actions, &keys, &[(1, 0), (2, 0)], OnCycle::Refuse).unwrap();
        assert_eq!(ids(&got), ["first", "second", "join"]);
        assert_eq!(got[2].after, ["first", "second"]);
    }

    #[test]
    fn a_cycle_is_an_error() {
        let actions = ["a", "b", "c"].map(action).to_vec();
        let keys = [(0, ActionKind::Build, 0); 3];
        let err = order(
            actions.clone(),
            &keys,
            &[(0, 1), (1, 2), (2, 1)],
            OnCycle::Refuse,
        )
        .unwrap_err();
        assert!(
            matches!(err, PlanError::Cycle(ref id) if id == "b" || id == "c"),
            "{err:?}"
        );
        // Dropping the edge back to an earlier action (c → b) orders the
        // rest.
        let got = order(
            actions,
            &keys,
            &[(0, 1), (1, 2), (2, 1)],
            OnCycle::DropBackEdges,
        )
        .unwrap();
        assert_eq!(ids(&got), ["a", "b", "c"]);
        assert_eq!(got[2].after, ["b"]);
    }
}
