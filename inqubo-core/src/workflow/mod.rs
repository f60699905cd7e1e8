//! Workflows: named graphs of steps, built with a typed builder.
//!
//! ```
//! use inqubo_core::{Step, StepContext, StepError, Workflow};
//!
//! async fn fetch(_: (), _: StepContext) -> Result<Vec<u32>, StepError> { Ok(vec![1, 2, 3]) }
//! async fn total(v: Vec<u32>, _: StepContext) -> Result<u32, StepError> { Ok(v.iter().sum()) }
//! async fn count(v: Vec<u32>, _: StepContext) -> Result<usize, StepError> { Ok(v.len()) }
//!
//! let flow = Workflow::builder("stats")
//!     .start(Step::new("fetch", fetch))
//!     .then((Step::new("total", total), Step::new("count", count))) // in parallel
//!     .build()?;
//! assert_eq!(flow.steps().len(), 3);
//! # Ok::<(), inqubo_core::WorkflowError>(())
//! ```
//!
//! The compiler checks that every step's input type is its parent's output type: placing
//! `count` after `total` above would not compile, because `total` produces a `u32` and `count`
//! takes a `Vec<u32>`.

mod builder;
mod join_shape;
mod stage;
#[cfg(test)]
mod tests;

use std::{fmt, sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};

pub use self::{
    builder::{NotStarted, WorkflowBuilder},
    join_shape::JoinShape,
    stage::{Chain, Stage, StageSpec},
};
use crate::{
    name::{NameError, StepName, WorkflowName},
    retry::{RetryPolicy, RetrySpec},
    step::{ErasedStep, StepSpec},
};

/// Why a workflow could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WorkflowError {
    /// The workflow's name is not a valid identifier.
    #[error("invalid workflow name `{name}`")]
    InvalidWorkflowName {
        /// The refused name.
        name: String,
        /// Why it was refused.
        #[source]
        source: NameError,
    },
    /// A step's name is not a valid identifier.
    #[error("invalid step name `{name}`")]
    InvalidStepName {
        /// The refused name.
        name: String,
        /// Why it was refused.
        #[source]
        source: NameError,
    },
    /// Two steps share a name.
    #[error("step `{0}` appears more than once")]
    DuplicateStep(String),
    /// A step's timeout is longer than [`MAX_STEP_TIMEOUT`](crate::MAX_STEP_TIMEOUT): the
    /// broker would take its input back (consumer timeout) before the attempt gives up, and
    /// another runner would run it again while it still runs.
    #[error(
        "step `{step}` has a timeout of {timeout:?}, more than the {max:?} an attempt may hold its input (RabbitMQ's consumer timeout is 30 minutes by default)"
    )]
    TimeoutTooLong {
        /// The step.
        step: String,
        /// Its timeout.
        timeout: std::time::Duration,
        /// The longest allowed.
        max: std::time::Duration,
    },
    /// A map follows another map directly: put a step between them that turns the first
    /// map's results into the second one's list.
    #[error(
        "map `{map}` follows map `{parent}` directly; put a step between them that returns the list to map over"
    )]
    MapAfterMap {
        /// The second map.
        map: String,
        /// The map before it.
        parent: String,
    },
}

/// One step of a built workflow, with its place in the graph.
#[derive(Clone)]
pub struct StepNode {
    name: StepName,
    parents: Vec<StepName>,
    children: Vec<StepName>,
    join: Option<JoinShape>,
    map: bool,
    settled: bool,
    spec: StepSpec,
}

impl fmt::Debug for StepNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepNode")
            .field("name", &self.name)
            .field("parents", &self.parents)
            .field("children", &self.children)
            .finish_non_exhaustive()
    }
}

impl StepNode {
    /// The step's name.
    pub fn name(&self) -> &StepName {
        &self.name
    }

    /// The steps whose success triggers this one; empty for a first step.
    pub fn parents(&self) -> &[StepName] {
        &self.parents
    }

    /// The steps triggered by this one's success; empty for a last step.
    pub fn children(&self) -> &[StepName] {
        &self.children
    }

    /// For a step that waits for several parents, how its input is assembled from theirs.
    pub fn join(&self) -> Option<&JoinShape> {
        self.join.as_ref()
    }

    /// Whether this step waits for several parents, or for every element of a map.
    pub fn is_join(&self) -> bool {
        self.join.is_some()
    }

    /// Whether the step's queue takes its input from its parents' `succeeded` events. A join
    /// step's input comes from its join shards, and a map's elements from its parent's runner,
    /// both through the retry exchange.
    pub fn listens_to_parents(&self) -> bool {
        !self.is_join() && !self.map
    }

    /// Whether this step is a map whose failed elements are collected as errors
    /// ([`WorkflowBuilder::map_settled`]) instead of failing the run.
    pub fn collects_errors(&self) -> bool {
        self.map && self.settled
    }

    /// Whether this step is a map: it runs once per element of its parent's list
    /// ([`WorkflowBuilder::map`]).
    pub fn is_map(&self) -> bool {
        self.map
    }

    /// The step's retry policy.
    pub fn retry(&self) -> &RetryPolicy {
        &self.spec.retry
    }

    /// How long one attempt may run.
    pub fn timeout(&self) -> Duration {
        self.spec.timeout
    }

    /// How many attempts of the step one runner may run at once, if limited
    /// ([`Step::concurrency`](crate::Step::concurrency)).
    pub fn concurrency(&self) -> Option<u16> {
        self.spec.concurrency.map(std::num::NonZeroU16::get)
    }

    /// How many attempts of the step the whole fleet may run at once, if limited
    /// ([`Step::fleet_concurrency`](crate::Step::fleet_concurrency)): its queue then has a
    /// single active consumer.
    pub fn fleet_concurrency(&self) -> Option<u16> {
        self.spec.fleet_concurrency.map(std::num::NonZeroU16::get)
    }

    /// How many attempts of the step the whole fleet may start per second, if limited
    /// ([`Step::fleet_rate`](crate::Step::fleet_rate)).
    pub fn fleet_rate(&self) -> Option<u32> {
        self.spec.fleet_rate.map(std::num::NonZeroU32::get)
    }

    /// Whether the step's queue has a single active consumer: one runner at a time takes its
    /// inputs, because of a fleet-wide limit.
    pub fn single_consumer(&self) -> bool {
        self.spec.fleet_concurrency.is_some() || self.spec.fleet_rate.is_some()
    }

    pub(crate) fn handler(&self) -> &dyn ErasedStep {
        &*self.spec.handler
    }
}

struct WorkflowInner {
    name: WorkflowName,
    steps: Vec<StepNode>,
    rules: RunRules,
}

/// How a workflow's runs behave beyond their steps (set on the builder).
#[derive(Debug, Clone, Copy)]
struct RunRules {
    /// See [`WorkflowBuilder::fail_fast`].
    fail_fast: bool,
    /// See [`WorkflowBuilder::unique_runs`].
    unique_runs: bool,
    /// See [`WorkflowBuilder::priorities`].
    priorities: bool,
}

impl Default for RunRules {
    fn default() -> Self {
        Self {
            fail_fast: true,
            unique_runs: true,
            priorities: false,
        }
    }
}

/// One first step, no fan-out, no join.
fn is_chain(steps: &[StepNode]) -> bool {
    let roots = steps.iter().filter(|s| s.parents.is_empty()).count();
    roots == 1
        && steps
            .iter()
            .all(|s| s.children.len() <= 1 && !s.is_join() && !s.map)
}

/// A validated workflow: a named graph of steps. Cheap to clone.
#[derive(Clone)]
pub struct Workflow {
    inner: Arc<WorkflowInner>,
}

impl fmt::Debug for Workflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Workflow")
            .field("name", &self.inner.name)
            .field("steps", &self.inner.steps)
            .finish()
    }
}

impl Workflow {
    /// Starts building a workflow named `name` (checked by [`WorkflowBuilder::build`]).
    pub fn builder(name: impl Into<String>) -> WorkflowBuilder<NotStarted> {
        WorkflowBuilder::new(name.into())
    }

    /// A workflow of `steps`, given parents before children with their edges filled in.
    fn new(name: WorkflowName, steps: Vec<StepNode>, rules: RunRules) -> Self {
        Self {
            inner: Arc::new(WorkflowInner { rules, name, steps }),
        }
    }

    /// The workflow's name.
    pub fn name(&self) -> &WorkflowName {
        &self.inner.name
    }

    /// Every step, parents before children.
    pub fn steps(&self) -> &[StepNode] {
        &self.inner.steps
    }

    /// The step called `name`, if any.
    pub fn step(&self, name: &str) -> Option<&StepNode> {
        self.inner.steps.iter().find(|s| s.name.as_str() == name)
    }

    /// The steps without children: a run succeeds when all of them have.
    pub fn leaves(&self) -> impl Iterator<Item = &StepNode> {
        self.steps().iter().filter(|s| s.children.is_empty())
    }

    /// Whether a step failing for good stops the rest of the run (see
    /// [`WorkflowBuilder::fail_fast`]).
    pub fn fails_fast(&self) -> bool {
        self.inner.rules.fail_fast
    }

    /// Whether runs may have a priority class (see [`WorkflowBuilder::priorities`]).
    pub fn has_priorities(&self) -> bool {
        self.inner.rules.priorities
    }

    /// Whether a run id names one run only (see [`WorkflowBuilder::unique_runs`]).
    pub fn unique_runs(&self) -> bool {
        self.inner.rules.unique_runs
    }

    /// The first step that admits a run: the first step whose queue receives the trigger.
    /// With [`unique_runs`](Self::unique_runs), it sends every new trigger to the run join,
    /// which starts every first step once it knows the run is new.
    pub fn gatekeeper(&self) -> Option<&StepNode> {
        self.inner.steps.iter().find(|s| s.parents().is_empty())
    }

    /// Whether `step`'s queue is bound to the trigger: every first step's, or only the
    /// [`gatekeeper`](Self::gatekeeper)'s when runs are unique (the run join sends the other
    /// first steps their input when it admits a run).
    pub fn takes_trigger(&self, step: &StepNode) -> bool {
        step.parents().is_empty()
            && (!self.unique_runs() || self.gatekeeper().map(StepNode::name) == Some(step.name()))
    }

    /// The steps without parents, which receive the run's input.
    pub fn roots(&self) -> impl Iterator<Item = &StepNode> {
        self.inner.steps.iter().filter(|s| s.parents().is_empty())
    }

    /// Whether the workflow is a single chain (one first step, no fan-out, no join).
    pub fn is_chain(&self) -> bool {
        is_chain(&self.inner.steps)
    }

    /// The join steps that can no longer run once `step` failed: joins downstream of it.
    pub fn joins_after(&self, step: &StepName) -> Vec<&StepNode> {
        let mut reached = vec![step.clone()];
        let mut joins = Vec::new();
        // Steps are in topological order, so one pass finds every descendant.
        for node in self.steps() {
            if node.parents.iter().any(|p| reached.contains(p)) {
                reached.push(node.name.clone());
                if node.is_join() {
                    joins.push(node);
                }
            }
        }
        joins
    }

    /// A serialisable description of the graph, for tools.
    pub fn definition(&self) -> WorkflowDefinition {
        let steps = self
            .steps()
            .iter()
            .map(|node| StepDefinition {
                name: node.name.clone(),
                parents: node.parents.clone(),
                input_type: node.spec.input_type.to_owned(),
                output_type: node.spec.output_type.to_owned(),
                retry: node.spec.retry.spec(),
                timeout_ms: u64::try_from(node.spec.timeout.as_millis()).unwrap_or(u64::MAX),
                map: node.map,
            })
            .collect();
        let edges = self
            .steps()
            .iter()
            .flat_map(|node| {
                node.parents.iter().map(|parent| Edge {
                    from: parent.clone(),
                    to: node.name.clone(),
                })
            })
            .collect();
        WorkflowDefinition {
            name: self.inner.name.clone(),
            steps,
            edges,
            schedules: Vec::new(),
        }
    }
}

/// The JSON form of a workflow: its steps, edges and retry policies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowDefinition {
    /// The workflow's name.
    pub name: WorkflowName,
    /// The steps, parents before children.
    pub steps: Vec<StepDefinition>,
    /// Parent-to-child edges.
    pub edges: Vec<Edge>,
    /// The cron schedules the announcing runner was given in its code (runners fill this in;
    /// a workflow alone has none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<crate::schedule::ScheduleDefinition>,
}

/// The JSON form of one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepDefinition {
    /// The step's name.
    pub name: StepName,
    /// Its parents; empty for a first step.
    pub parents: Vec<StepName>,
    /// The Rust type of its input.
    pub input_type: String,
    /// The Rust type of its output.
    pub output_type: String,
    /// Its retry policy.
    pub retry: RetrySpec,
    /// How long one attempt may run, in milliseconds.
    pub timeout_ms: u64,
    /// Whether the step is a map, run once per element of its parent's list.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub map: bool,
}

/// A parent-to-child edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edge {
    /// The parent.
    pub from: StepName,
    /// The child.
    pub to: StepName,
}
