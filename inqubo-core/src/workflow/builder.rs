//! The typed builder: how stages (see [`stage`](super::stage)) are attached to one another to
//! make the graph.

use std::{collections::HashMap, fmt, marker::PhantomData};

use serde::Serialize;

use super::{
    JoinShape, RunRules, StepNode, Workflow, WorkflowError,
    stage::{Stage, StageKind, StageSpec},
};
use crate::{
    name::{StepName, WorkflowName},
    step::{Step, StepSpec},
};

/// Marks a [`WorkflowBuilder`] that has no first step yet: call [`WorkflowBuilder::start`].
#[derive(Debug)]
pub enum NotStarted {}

/// Marks a [`WorkflowBuilder`] that has a first stage, so that it can be extended and built.
///
/// A started builder is typed with the output of its last stage, which is `Serialize` like every
/// step's output; [`NotStarted`] is not. Sealed: public in a private module and never
/// re-exported, so that no other type can implement it. Generic code over a builder's type
/// bounds it by `serde::Serialize` instead.
#[diagnostic::on_unimplemented(
    message = "this workflow builder has no step yet: `{Self}` is not a step's output",
    label = "call `start` first",
    note = "`Workflow::builder(name)` makes an empty builder: give it its first step with \
            `.start(Step::new(..))`, then `.then(..)` and `.build()`",
    note = "in generic code, bound the builder's type by `serde::Serialize`, like every step's \
            output"
)]
pub trait Started {}

// Not recommended, so that the compiler reports `NotStarted: Started` with the message above
// rather than asking for `NotStarted: Serialize`.
#[diagnostic::do_not_recommend]
impl<T: Serialize> Started for T {}

/// Builds a [`Workflow`]; see [`Workflow::builder`].
pub struct WorkflowBuilder<T> {
    name: String,
    stages: Vec<StageSpec>,
    rules: RunRules,
    _tail: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for WorkflowBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkflowBuilder")
            .field("name", &self.name)
            .field("stages", &self.stages)
            .finish()
    }
}

impl WorkflowBuilder<NotStarted> {
    /// An empty builder of the workflow `name`.
    pub(super) fn new(name: String) -> Self {
        Self {
            name,
            stages: Vec::new(),
            rules: RunRules::default(),
            _tail: PhantomData,
        }
    }

    /// Whether a step failing for good stops the rest of its run (default `true`): the run's
    /// other branches take no new step (their inputs are parked as `run_failed`, and a resume
    /// runs them), and steps running are told through [`StepContext::cancelled`](crate::StepContext::cancelled).
    /// With `false`, the other branches run to their end; the run still fails.
    #[must_use]
    pub fn fail_fast(mut self, fail_fast: bool) -> Self {
        self.rules.fail_fast = fail_fast;
        self
    }

    /// Whether a run id names one run only (default `true`): a trigger for a run id that
    /// already has a run — running, or ended and still remembered by its run join — starts
    /// nothing, and `<workflow>.run.duplicate` says what state the existing run is in. Each
    /// trigger then takes one more hop (through the run join, which admits it) before its
    /// first step runs. With `false`, every trigger starts its steps at once, and triggering
    /// a known run id again mixes two runs under one id.
    #[must_use]
    pub fn unique_runs(mut self, unique: bool) -> Self {
        self.rules.unique_runs = unique;
        self
    }

    /// Whether runs of this workflow may be triggered with a priority class (default
    /// `false`): each step then has a queue per class, `<step>.high` and `<step>.low` besides
    /// its own, and runners take a higher class's inputs first without starving the lower
    /// ones (see [`Priority`](crate::Priority)). A run's class is its trigger's `run-priority`
    /// header; without priorities, the header is ignored.
    #[must_use]
    pub fn priorities(mut self, priorities: bool) -> Self {
        self.rules.priorities = priorities;
        self
    }

    /// Sets the first stage, which receives the run's input.
    pub fn start<I, S: Stage<I>>(mut self, stage: S) -> WorkflowBuilder<S::Output> {
        self.stages.push(stage.into_spec());
        WorkflowBuilder {
            name: self.name,
            stages: self.stages,
            rules: self.rules,
            _tail: PhantomData,
        }
    }
}

// `T: Started` is a bound of each method rather than of the impl, so that calling them on a
// `WorkflowBuilder<NotStarted>` reports the bound's own message rather than "method not found".
impl<T> WorkflowBuilder<T> {
    /// Appends a stage that receives the output of the previous one.
    ///
    /// Pass a tuple of steps (or [`Chain`](super::Chain)s) to run them in parallel.
    #[must_use]
    pub fn then<S: Stage<T>>(mut self, stage: S) -> WorkflowBuilder<S::Output>
    where
        T: Started,
    {
        self.stages.push(stage.into_spec());
        WorkflowBuilder {
            name: self.name,
            stages: self.stages,
            rules: self.rules,
            _tail: PhantomData,
        }
    }

    /// Appends the step that receives a map's results, in the order of the elements, once
    /// every element has succeeded: the same as [`then`](Self::then) with one step, named for
    /// what it does after [`map`](Self::map).
    #[must_use]
    pub fn reduce<O>(self, step: Step<T, O>) -> WorkflowBuilder<O>
    where
        T: Started,
    {
        self.then(step)
    }

    /// Validates the graph and builds the workflow.
    ///
    /// Only a started builder can be built, so that a workflow has at least one step:
    ///
    /// ```compile_fail,E0277
    /// use inqubo_core::Workflow;
    ///
    /// // error: this workflow builder has no step yet: `NotStarted` is not a step's output
    /// let flow = Workflow::builder("empty").build();
    /// ```
    pub fn build(self) -> Result<Workflow, WorkflowError>
    where
        T: Started,
    {
        let name = WorkflowName::new(self.name.clone()).map_err(|source| {
            WorkflowError::InvalidWorkflowName {
                name: self.name.clone(),
                source,
            }
        })?;
        let mut drafts = Vec::new();
        attach(
            StageSpec(StageKind::Sequence(self.stages)),
            &Tail::Start,
            &mut drafts,
        );
        for draft in &drafts {
            if draft.map
                && let Tail::One(parent) = draft.input
                && drafts[parent].map
            {
                return Err(WorkflowError::MapAfterMap {
                    map: draft.spec.name.clone(),
                    parent: drafts[parent].spec.name.clone(),
                });
            }
        }
        let mut names = Vec::with_capacity(drafts.len());
        let mut index_of = HashMap::new();
        for (index, draft) in drafts.iter().enumerate() {
            let step = StepName::new(draft.spec.name.clone()).map_err(|source| {
                WorkflowError::InvalidStepName {
                    name: draft.spec.name.clone(),
                    source,
                }
            })?;
            if index_of.insert(step.clone(), index).is_some() {
                return Err(WorkflowError::DuplicateStep(step.to_string()));
            }
            if draft.spec.timeout > crate::step::MAX_STEP_TIMEOUT {
                return Err(WorkflowError::TimeoutTooLong {
                    step: step.to_string(),
                    timeout: draft.spec.timeout,
                    max: crate::step::MAX_STEP_TIMEOUT,
                });
            }
            names.push(step);
        }
        let mut steps: Vec<StepNode> = drafts
            .iter()
            .zip(&names)
            .map(|(draft, name)| {
                let parents: Vec<StepName> = draft
                    .input
                    .leaves()
                    .into_iter()
                    .map(|p| names[p].clone())
                    .collect();
                // A step after a map collects its results: it waits for every element.
                let join = match &draft.input {
                    Tail::Many(_) => Some(draft.input.shape(&names)),
                    Tail::One(parent) if drafts[*parent].map => {
                        Some(JoinShape::Step(names[*parent].clone()))
                    }
                    Tail::Start | Tail::One(_) => None,
                };
                StepNode {
                    name: name.clone(),
                    parents,
                    children: Vec::new(),
                    join,
                    map: draft.map,
                    settled: draft.settled,
                    spec: draft.spec.clone(),
                }
            })
            .collect();
        for (index, draft) in drafts.iter().enumerate() {
            for parent in draft.input.leaves() {
                steps[parent].children.push(names[index].clone());
            }
        }
        Ok(Workflow::new(name, steps, self.rules))
    }
}

// Only a stage that returns a `Vec` can be mapped over: its JSON is the list of elements.
impl<I> WorkflowBuilder<Vec<I>> {
    /// Appends a *map*: `step` runs once per element of the list the previous stage returns,
    /// in parallel across runners, and what follows receives its results as a list, in the
    /// order of the elements (see [`reduce`](Self::reduce)).
    ///
    /// The list's length is known only when the run gets there; an empty list runs no
    /// element and hands `[]` on. Each element has its own attempts, retries and events
    /// (marked `map-index`); an element failing for good fails the run, once.
    ///
    /// ```
    /// use inqubo_core::{Step, StepContext, StepError, Workflow};
    ///
    /// async fn list(n: u32, _: StepContext) -> Result<Vec<u32>, StepError> { Ok((0..n).collect()) }
    /// async fn square(x: u32, _: StepContext) -> Result<u64, StepError> { Ok(u64::from(x * x)) }
    /// async fn total(v: Vec<u64>, _: StepContext) -> Result<u64, StepError> { Ok(v.iter().sum()) }
    ///
    /// let flow = Workflow::builder("squares")
    ///     .start(Step::new("list", list))
    ///     .map(Step::new("square", square))
    ///     .reduce(Step::new("total", total))
    ///     .build()?;
    /// assert!(flow.step("square").unwrap().is_map());
    /// # Ok::<(), inqubo_core::WorkflowError>(())
    /// ```
    #[must_use]
    pub fn map<O>(mut self, step: Step<I, O>) -> WorkflowBuilder<Vec<O>> {
        self.stages
            .push(StageSpec(StageKind::Map(step.spec, false)));
        WorkflowBuilder {
            name: self.name,
            stages: self.stages,
            rules: self.rules,
            _tail: PhantomData,
        }
    }

    /// Like [`map`](Self::map), but an element that fails for good does not fail the run: it is
    /// parked and announced `failed` as usual, and what follows receives it as an `Err` with
    /// its failure, in its place among the others' `Ok`s.
    ///
    /// ```
    /// use inqubo_core::{FailedBody, Step, StepContext, StepError, Workflow};
    ///
    /// async fn list(n: u32, _: StepContext) -> Result<Vec<u32>, StepError> { Ok((0..n).collect()) }
    /// async fn check(x: u32, _: StepContext) -> Result<u32, StepError> {
    ///     if x == 3 { Err(StepError::fatal("three")) } else { Ok(x) }
    /// }
    /// async fn report(results: Vec<Result<u32, FailedBody>>, _: StepContext) -> Result<usize, StepError> {
    ///     Ok(results.iter().filter(|r| r.is_err()).count())
    /// }
    ///
    /// let flow = Workflow::builder("checks")
    ///     .start(Step::new("list", list))
    ///     .map_settled(Step::new("check", check))
    ///     .reduce(Step::new("report", report))
    ///     .build()?;
    /// assert!(flow.step("check").unwrap().collects_errors());
    /// # Ok::<(), inqubo_core::WorkflowError>(())
    /// ```
    #[must_use]
    pub fn map_settled<O>(
        mut self,
        step: Step<I, O>,
    ) -> WorkflowBuilder<Vec<Result<O, crate::event::FailedBody>>> {
        self.stages.push(StageSpec(StageKind::Map(step.spec, true)));
        WorkflowBuilder {
            name: self.name,
            stages: self.stages,
            rules: self.rules,
            _tail: PhantomData,
        }
    }
}

struct Draft {
    spec: StepSpec,
    /// Whether the step runs once per element of its parent's list.
    map: bool,
    /// For a map: whether failed elements are collected as errors.
    settled: bool,
    /// What the step receives: the run input, one parent's output, or a join of several.
    input: Tail,
}

/// The last steps of a stage, shaped like the stage's output type.
#[derive(Debug, Clone)]
enum Tail {
    /// Nothing yet: the run input.
    Start,
    /// One step's output.
    One(usize),
    /// A tuple of outputs, from steps in parallel.
    Many(Vec<Tail>),
}

impl Tail {
    /// The steps whose outputs make up this tail, in order.
    fn leaves(&self) -> Vec<usize> {
        match self {
            Tail::Start => Vec::new(),
            Tail::One(index) => vec![*index],
            Tail::Many(parts) => parts.iter().flat_map(Tail::leaves).collect(),
        }
    }

    fn shape(&self, names: &[StepName]) -> JoinShape {
        match self {
            Tail::Start => JoinShape::Tuple(Vec::new()),
            Tail::One(index) => JoinShape::Step(names[*index].clone()),
            Tail::Many(parts) => JoinShape::Tuple(parts.iter().map(|p| p.shape(names)).collect()),
        }
    }
}

/// Adds `stage` to `drafts` after `tail` and returns the stage's own tail.
///
/// Drafts are pushed parents first, so their order is a topological order of the graph, and
/// the graph cannot have a cycle.
fn attach(stage: StageSpec, tail: &Tail, drafts: &mut Vec<Draft>) -> Tail {
    match stage.0 {
        StageKind::Step(spec) => {
            drafts.push(Draft {
                spec,
                map: false,
                settled: false,
                input: tail.clone(),
            });
            Tail::One(drafts.len() - 1)
        }
        StageKind::Map(spec, settled) => {
            drafts.push(Draft {
                spec,
                map: true,
                settled,
                input: tail.clone(),
            });
            Tail::One(drafts.len() - 1)
        }
        StageKind::Parallel(stages) => Tail::Many(
            stages
                .into_iter()
                .map(|stage| attach(stage, tail, drafts))
                .collect(),
        ),
        StageKind::Sequence(stages) => stages
            .into_iter()
            .fold(tail.clone(), |tail, stage| attach(stage, &tail, drafts)),
    }
}
