//! Which action starts next: a pure dependency queue over a plan's actions
//! (by index), with no I/O and no async. In: each action's predecessors,
//! whether it needs one of the `--jobs` permits (builds), and whether a
//! crashed run already did it. Out: the actions to start, one at a time,
//! as their predecessors succeed. Guarantees: an action starts at most
//! once, only after every predecessor succeeded (or, under
//! [`OnFailure::KeepGoing`], finished); at most `permits` permit-holding
//! actions run at once; after a failure (under [`OnFailure::Stop`]) or
//! [`Scheduler::stop`] nothing new starts. The work per finished action is
//! proportional to its dependents, not to the size of the plan.
//!
//! Order: actions become ready in batches (the roots at first, then the
//! dependents one finished action released), each batch in plan order;
//! they start in the order they became ready, and a permit-holding action
//! waiting for a permit does not hold back the others behind it.

use std::collections::{HashMap, VecDeque};

/// One action as the scheduler sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    /// Indices of the actions that must succeed first. An index outside
    /// the plan is never satisfied: the action never starts.
    pub after: Vec<usize>,
    /// Whether it runs under one of the permits (a build under `--jobs`).
    pub permit: bool,
    /// Done by an earlier run and still in effect: not started again, and
    /// satisfied for its dependents.
    pub done: bool,
}

/// Each action's predecessors by index, from `(id, the ids it waits for)`
/// in plan order: an id names the first action that has it, and one the
/// plan lacks becomes an index outside it (never satisfied).
pub fn predecessors<'a>(
    actions: impl Iterator<Item = (&'a str, &'a [String])> + Clone,
) -> Vec<Vec<usize>> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, (id, _)) in actions.clone().enumerate() {
        index.entry(id).or_insert(i);
    }
    actions
        .map(|(_, after)| {
            after
                .iter()
                .map(|p| index.get(p.as_str()).copied().unwrap_or(usize::MAX))
                .collect()
        })
        .collect()
}

/// What a failed action means for the rest of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Nothing new starts (a deploy, a rollback, a restart).
    Stop,
    /// A failed action orders like a finished one (a stop plan goes on
    /// past a unit that fails to stop).
    KeepGoing,
}

/// Where one action is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Waiting for predecessors.
    Blocked,
    /// Every predecessor finished; waiting to be handed out.
    Ready,
    Running,
    Succeeded,
    Failed,
}

#[derive(Debug)]
pub struct Scheduler {
    dependents: Vec<Vec<usize>>,
    /// Predecessors not finished yet, per action.
    waiting: Vec<usize>,
    permit: Vec<bool>,
    state: Vec<State>,
    /// Ready actions in the order they became ready, with their sequence
    /// number: those without and those with a permit to wait for.
    ready: VecDeque<(u64, usize)>,
    queued: VecDeque<(u64, usize)>,
    seq: u64,
    permits: usize,
    /// Permits held (by running permit actions).
    held: usize,
    on_failure: OnFailure,
    stopping: bool,
}

impl Scheduler {
    /// A scheduler over `nodes` (a plan's actions, in plan order) with
    /// `permits` permits (at least one).
    pub fn new(nodes: &[Node], permits: usize, on_failure: OnFailure) -> Self {
        let n = nodes.len();
        let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut waiting = vec![0; n];
        let mut state = vec![State::Blocked; n];
        for (i, node) in nodes.iter().enumerate() {
            if node.done {
                state[i] = State::Succeeded;
                continue;
            }
            let mut after = node.after.clone();
            after.sort_unstable();
            after.dedup();
            for p in after {
                match nodes.get(p) {
                    Some(pred) if pred.done => {}
                    Some(_) => {
                        dependents[p].push(i);
                        waiting[i] += 1;
                    }
                    // Never satisfied.
                    None => waiting[i] += 1,
                }
            }
        }
        let mut s = Self {
            dependents,
            waiting,
            permit: nodes.iter().map(|n| n.permit).collect(),
            state,
            ready: VecDeque::new(),
            queued: VecDeque::new(),
            seq: 0,
            permits: permits.max(1),
            held: 0,
            on_failure,
            stopping: false,
        };
        for i in 0..n {
            if s.state[i] == State::Blocked && s.waiting[i] == 0 {
                s.make_ready(i);
            }
        }
        s
    }

    fn make_ready(&mut self, i: usize) {
        self.state[i] = State::Ready;
        let entry = (self.seq, i);
        self.seq += 1;
        if self.permit[i] {
            self.queued.push_back(entry);
        } else {
            self.ready.push_back(entry);
        }
    }

    /// The next action to start, now marked running; `None` when nothing
    /// can start now (wait for a running one to finish).
    pub fn start_next(&mut self) -> Option<usize> {
        if self.stopping {
            return None;
        }
        let permit_free = self.held < self.permits;
        let take_queued = match (self.ready.front(), self.queued.front()) {
            (_, Some(_)) if !permit_free => false,
            (Some(&(r, _)), Some(&(q, _))) => q < r,
            (None, Some(_)) => true,
            (_, None) => false,
        };
        let (_, i) = if take_queued {
            self.held += 1;
            self.queued.pop_front()?
        } else {
            self.ready.pop_front()?
        };
        self.state[i] = State::Running;
        Some(i)
    }

    /// `i` succeeded: its dependents whose predecessors are all done
    /// become ready, in plan order.
    pub fn succeeded(&mut self, i: usize) {
        if self.finish(i, State::Succeeded) {
            self.release(i);
        }
    }

    /// `i` failed: under [`OnFailure::Stop`] nothing new starts (its
    /// dependents never do); under [`OnFailure::KeepGoing`] it releases its
    /// dependents like a success.
    pub(crate) fn failed(&mut self, i: usize) {
        if !self.finish(i, State::Failed) {
            return;
        }
        match self.on_failure {
            OnFailure::Stop => self.stopping = true,
            OnFailure::KeepGoing => self.release(i),
        }
    }

    /// Nothing new starts (a signal); running actions may still finish.
    pub(crate) fn stop(&mut self) {
        self.stopping = true;
    }

    /// Marks the running action `i` finished (`to`); false (and nothing
    /// changed) when `i` is not running.
    fn finish(&mut self, i: usize, to: State) -> bool {
        if self.state.get(i) != Some(&State::Running) {
            return false;
        }
        if self.permit[i] {
            self.held = self.held.saturating_sub(1);
        }
        self.state[i] = to;
        true
    }

    fn release(&mut self, i: usize) {
        let Some(deps) = self.dependents.get(i) else {
            return;
        };
        let mut released: Vec<usize> = Vec::new();
        for &d in deps {
            self.waiting[d] = self.waiting[d].saturating_sub(1);
            if self.waiting[d] == 0 && self.state[d] == State::Blocked {
                released.push(d);
            }
        }
        released.sort_unstable();
        for d in released {
            self.make_ready(d);
        }
    }

    /// Where action `i` is.
    pub(crate) fn state(&self, i: usize) -> Option<State> {
        self.state.get(i).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::{Node, OnFailure, Scheduler, State};

    fn node(after: &[usize]) -> Node {
        Node {
            after: after.to_vec(),
            ..Node::default()
        }
    }

    fn build(after: &[usize]) -> Node {
        Node {
            after: after.to_vec(),
            permit: true,
            done: false,
        }
    }

    /// Everything startable now, in order.
    fn drain(s: &mut Scheduler) -> Vec<usize> {
        std::iter::from_fn(|| s.start_next()).collect()
    }

    /// One event of a table: finish an action, or stop.
    #[derive(Clone, Copy)]
    enum Ev {
        Ok(usize),
        Fail(usize),
        Stop,
    }

    /// Runs `events` after the first drain; returns each drain.
    fn run(nodes: &[Node], permits: usize, on: OnFailure, events: &[Ev]) -> Vec<Vec<usize>> {
        let mut s = Scheduler::new(nodes, permits, on);
        let mut out = vec![drain(&mut s)];
        for e in events {
            match *e {
                Ev::Ok(i) => s.succeeded(i),
                Ev::Fail(i) => s.failed(i),
                Ev::Stop => s.stop(),
            }
            out.push(drain(&mut s));
        }
        out
    }

    /// One row: what it shows, the plan, the permits, the failure policy,
    /// the events after the first drain, and every drain.
    type Case = (
        &'static str,
        Vec<Node>,
        usize,
        OnFailure,
        Vec<Ev>,
        Vec<Vec<usize>>,
    );

    #[test]
    fn table() {
        use Ev::{Fail, Ok, Stop};
        use OnFailure::{KeepGoing, Stop as Halt};
        let cases: Vec<Case> = vec![
            (
                "roots start at once, in plan order",
                vec![node(&[]), node(&[]), node(&[])],
                1,
                Halt,
                vec![],
                vec![vec![0, 1, 2]],
            ),
            (
                "a chain releases one at a time",
                vec![node(&[]), node(&[0]), node(&[1])],
                1,
                Halt,
                vec![Ok(0), Ok(1), Ok(2)],
                vec![vec![0], vec![1], vec![2], vec![]],
            ),
            (
                "dependents released in plan order, not in edge order",
                vec![node(&[]), node(&[3, 0]), node(&[]), node(&[]), node(&[0])],
                1,
                Halt,
                vec![Ok(3), Ok(0)],
                vec![vec![0, 2, 3], vec![], vec![1, 4]],
            ),
            (
                "an action waits for every predecessor",
                vec![node(&[]), node(&[]), node(&[0, 1])],
                1,
                Halt,
                vec![Ok(0), Ok(1)],
                vec![vec![0, 1], vec![], vec![2]],
            ),
            (
                "a failure stops everything new; its dependents never start",
                vec![node(&[]), node(&[]), node(&[0]), node(&[1])],
                1,
                Halt,
                vec![Fail(0), Ok(1)],
                vec![vec![0, 1], vec![], vec![]],
            ),
            (
                "keep going: a failure releases its dependents",
                vec![node(&[]), node(&[0]), node(&[1])],
                1,
                KeepGoing,
                vec![Fail(0), Ok(1)],
                vec![vec![0], vec![1], vec![2]],
            ),
            (
                "a signal: nothing new starts, running ones finish",
                vec![node(&[]), node(&[0]), node(&[])],
                1,
                Halt,
                vec![Stop, Ok(0), Ok(2)],
                vec![vec![0, 2], vec![], vec![], vec![]],
            ),
            (
                "permits bound the builds, not the others",
                vec![build(&[]), build(&[]), build(&[]), node(&[]), build(&[])],
                2,
                Halt,
                vec![Ok(1), Ok(3), Ok(0), Ok(2), Ok(4)],
                vec![vec![0, 1, 3], vec![2], vec![], vec![4], vec![], vec![]],
            ),
            (
                "builds get permits in the order they became ready",
                vec![build(&[]), node(&[]), build(&[]), build(&[1])],
                1,
                Halt,
                vec![Ok(1), Ok(0), Ok(2)],
                vec![vec![0, 1], vec![], vec![2], vec![3]],
            ),
            (
                "a build waiting for a permit does not hold back what follows it",
                vec![build(&[]), build(&[]), node(&[])],
                1,
                Halt,
                vec![Ok(0)],
                vec![vec![0, 2], vec![1]],
            ),
            (
                "queued builds do not start after a failure",
                vec![build(&[]), build(&[]), node(&[])],
                1,
                Halt,
                vec![Fail(2), Ok(0)],
                vec![vec![0, 2], vec![], vec![]],
            ),
            (
                "a predecessor outside the plan is never satisfied",
                vec![node(&[]), node(&[7]), node(&[0])],
                1,
                Halt,
                vec![Ok(0), Ok(2)],
                vec![vec![0], vec![2], vec![]],
            ),
            (
                "a repeated predecessor counts once",
                vec![node(&[]), node(&[0, 0])],
                1,
                Halt,
                vec![Ok(0)],
                vec![vec![0], vec![1]],
            ),
        ];
        for (name, nodes, permits, on, events, want) in cases {
            assert_eq!(run(&nodes, permits, on, &events), want, "{name}");
        }
    }

    /// A resumed run: what was done is not started again and satisfies
    /// its dependents.
    #[test]
    fn done_actions_are_satisfied_and_not_started() {
        let nodes = vec![
            Node {
                done: true,
                ..node(&[])
            },
            node(&[0]),
            Node {
                done: true,
                ..node(&[1])
            },
            node(&[2]),
        ];
        let mut s = Scheduler::new(&nodes, 1, OnFailure::Stop);
        // 3 waits only on 2, done already: ready from the start.
        assert_eq!(drain(&mut s), vec![1, 3]);
        s.succeeded(1);
        s.succeeded(3);
        assert_eq!(drain(&mut s), Vec::<usize>::new());
        let states: Vec<_> = (0..4).map(|i| s.state(i)).collect();
        assert_eq!(states, vec![Some(State::Succeeded); 4]);
    }

    /// Finishing an action that is not running changes nothing: it does
    /// not release its dependents nor free a permit.
    #[test]
    fn only_a_running_action_finishes() {
        let nodes = vec![build(&[]), build(&[]), node(&[0])];
        let mut s = Scheduler::new(&nodes, 1, OnFailure::KeepGoing);
        assert_eq!(drain(&mut s), vec![0]);
        s.succeeded(1);
        s.failed(2);
        assert_eq!(drain(&mut s), Vec::<usize>::new());
        assert_eq!(s.state(1), Some(State::Ready));
        assert_eq!(s.state(2), Some(State::Blocked));
        s.succeeded(0);
        s.succeeded(0);
        assert_eq!(drain(&mut s), vec![1, 2]);
    }

    #[test]
    fn states_follow_the_run() {
        let mut s = Scheduler::new(&[node(&[]), node(&[0]), node(&[1])], 1, OnFailure::Stop);
        assert_eq!(s.state(1), Some(State::Blocked));
        assert_eq!(s.start_next(), Some(0));
        assert_eq!(s.state(0), Some(State::Running));
        s.failed(0);
        assert_eq!(s.start_next(), None);
        let states: Vec<_> = (0..3).map(|i| s.state(i)).collect();
        assert_eq!(
            states,
            vec![
                Some(State::Failed),
                Some(State::Blocked),
                Some(State::Blocked)
            ]
        );
        assert_eq!(s.state(3), None);
    }
}
