//! Stage 3, the phase graph: the actions of a plan as they are assembled,
//! with the edges between them and each one's sort key for [`super::order`],
//! and the barriers that stand for "all of these before all of those" when
//! that takes fewer edges than joining each pair.

use super::PlanError;
use super::order::{OnCycle, SortKey, order};
use crate::plan::{Action, Step};

/// A plan's actions under construction.
#[derive(Debug, Default)]
pub(in crate::plan) struct Graph {
    pub(crate) actions: Vec<Action>,
    keys: Vec<SortKey>,
    edges: Vec<(usize, usize)>,
}

impl Graph {
    /// Adds an action with its tie-break key; returns its index.
    pub(crate) fn push(&mut self, a: Action, key: SortKey) -> usize {
        self.actions.push(a);
        self.keys.push(key);
        self.actions.len() - 1
    }

    /// `from` runs before `to`.
    pub(crate) fn edge(&mut self, from: usize, to: usize) {
        self.edges.push((from, to));
    }

    /// The actions in their deterministic topological order.
    pub(crate) fn ordered(self) -> Result<Vec<Action>, PlanError> {
        order(self.actions, &self.keys, &self.edges, OnCycle::Refuse)
    }

    /// The actions in their deterministic topological order, for a graph
    /// that has no cycle by construction (the lifecycle's, over a
    /// validated configuration, whose `depends-on` has none); should one
    /// appear anyway, see [`OnCycle::DropBackEdges`].
    pub(crate) fn into_actions(self) -> Vec<Action> {
        order(
            self.actions,
            &self.keys,
            &self.edges,
            OnCycle::DropBackEdges,
        )
        .unwrap_or_default()
    }
}

/// Whether `from` actions all preceding `to` actions is cheaper through a
/// barrier: `from × to` direct edges against `from + to`.
pub(in crate::plan) fn needs_barrier(from: usize, to: usize) -> bool {
    from > 1 && to > 1 && from * to > from + to
}

pub(in crate::plan) fn barrier(id: &str, phase: Option<&str>, reason: &str) -> Action {
    Action {
        id: id.to_owned(),
        service: None,
        phase: phase.map(str::to_owned),
        reason: reason.to_owned(),
        after: Vec::new(),
        step: Step::Barrier,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::ActionKind;

    #[test]
    fn a_barrier_only_where_it_saves_edges() {
        // (from, to, barrier?): from × to direct edges against from + to.
        for (from, to, want) in [
            (0, 5, false),
            (1, 5, false),
            (5, 1, false),
            (2, 2, false),
            (2, 3, true),
            (3, 2, true),
            (10, 10, true),
        ] {
            assert_eq!(needs_barrier(from, to), want, "{from} → {to}");
        }
    }

    #[test]
    fn a_graph_orders_what_it_was_given() {
        let mut g = Graph::default();
        let ready = g.push(
            barrier("ready:core", Some("core"), "every service of core is ready"),
            (0, ActionKind::Barrier, 0),
        );
        let built = g.push(
            barrier("built", None, "every build succeeded"),
            (0, ActionKind::Barrier, 0),
        );
        g.edge(built, ready);
        let got = g.ordered().unwrap();
        assert_eq!(got[0].id, "built");
        assert_eq!(got[1].id, "ready:core");
        assert_eq!(got[1].phase.as_deref(), Some("core"));
        assert_eq!(got[1].after, ["built"]);
        assert_eq!(got[1].step, Step::Barrier);
    }
}
