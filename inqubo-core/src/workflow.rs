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

use std::{collections::HashMap, fmt, marker::PhantomData, sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{
    name::{NameError, StepName, WorkflowName},
    retry::{RetryPolicy, RetrySpec},
    step::{ErasedStep, Step, StepSpec},
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
    /// The workflow has no steps.
    #[error("workflow `{0}` has no steps: call `start` first")]
    Empty(String),
    /// A step waits for several parents, which this runtime does not run yet.
    #[error("step `{step}` joins several parents ({parents:?}); joins are not supported yet")]
    JoinNotSupported {
        /// The joining step.
        step: String,
        /// Its parents.
        parents: Vec<String>,
    },
}

/// The untyped shape of a stage (a step, steps in parallel, or a chain), built by [`Stage`].
///
/// You do not build this yourself; it exists so that steps, tuples and [`Chain`]s can be passed
/// to [`WorkflowBuilder::then`].
pub struct StageSpec(StageKind);

enum StageKind {
    Step(StepSpec),
    Parallel(Vec<StageSpec>),
    Sequence(Vec<StageSpec>),
}

impl fmt::Debug for StageSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            StageKind::Step(spec) => write!(f, "{}", spec.name),
            StageKind::Parallel(stages) => f.debug_tuple("Parallel").field(stages).finish(),
            StageKind::Sequence(stages) => f.debug_tuple("Sequence").field(stages).finish(),
        }
    }
}

/// Something that can follow a step producing `In`: a [`Step`] taking `In`, a tuple of stages
/// (run in parallel), or a [`Chain`].
pub trait Stage<In> {
    /// What the stage hands to whatever follows it (a tuple for parallel stages).
    type Output;

    /// The stage's untyped shape.
    fn into_spec(self) -> StageSpec;
}

impl<I, O> Stage<I> for Step<I, O> {
    type Output = O;

    fn into_spec(self) -> StageSpec {
        StageSpec(StageKind::Step(self.spec))
    }
}

macro_rules! parallel_stage {
    ($($stage:ident),+) => {
        impl<In, $($stage),+> Stage<In> for ($($stage,)+)
        where
            $($stage: Stage<In>,)+
        {
            type Output = ($($stage::Output,)+);

            #[allow(non_snake_case)]
            fn into_spec(self) -> StageSpec {
                let ($($stage,)+) = self;
                StageSpec(StageKind::Parallel(vec![$($stage.into_spec()),+]))
            }
        }
    };
}

parallel_stage!(A, B);
parallel_stage!(A, B, C);
parallel_stage!(A, B, C, D);
parallel_stage!(A, B, C, D, E);
parallel_stage!(A, B, C, D, E, F);
parallel_stage!(A, B, C, D, E, F, G);
parallel_stage!(A, B, C, D, E, F, G, H);

/// A sequence of stages that can itself be placed in parallel with others, to build trees.
///
/// ```
/// use inqubo_core::{Chain, Step, StepContext, StepError, Workflow};
///
/// async fn n(_: (), _: StepContext) -> Result<u32, StepError> { Ok(1) }
/// async fn inc(x: u32, _: StepContext) -> Result<u32, StepError> { Ok(x + 1) }
///
/// // a -> b -> c, and a -> d
/// let flow = Workflow::builder("tree")
///     .start(Step::new("a", n))
///     .then((Chain::new(Step::new("b", inc)).then(Step::new("c", inc)), Step::new("d", inc)))
///     .build()?;
/// assert_eq!(flow.step("c").unwrap().parents()[0].as_str(), "b");
/// # Ok::<(), inqubo_core::WorkflowError>(())
/// ```
pub struct Chain<I, O> {
    stages: Vec<StageSpec>,
    _types: PhantomData<fn(I) -> O>,
}

impl<I, O> fmt::Debug for Chain<I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Chain").field(&self.stages).finish()
    }
}

impl<I, O> Chain<I, O> {
    /// A chain starting with `stage`.
    pub fn new<S: Stage<I, Output = O>>(stage: S) -> Self {
        Self {
            stages: vec![stage.into_spec()],
            _types: PhantomData,
        }
    }

    /// Appends `stage`, which receives this chain's output.
    #[must_use]
    pub fn then<S: Stage<O>>(mut self, stage: S) -> Chain<I, S::Output> {
        self.stages.push(stage.into_spec());
        Chain {
            stages: self.stages,
            _types: PhantomData,
        }
    }
}

impl<I, O> Stage<I> for Chain<I, O> {
    type Output = O;

    fn into_spec(self) -> StageSpec {
        StageSpec(StageKind::Sequence(self.stages))
    }
}

/// Marks a [`WorkflowBuilder`] that has no first step yet.
#[derive(Debug)]
pub enum NotStarted {}

/// Builds a [`Workflow`]; see [`Workflow::builder`].
pub struct WorkflowBuilder<T> {
    name: String,
    stages: Vec<StageSpec>,
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
    /// Sets the first stage, which receives the run's input.
    pub fn start<I, S: Stage<I>>(mut self, stage: S) -> WorkflowBuilder<S::Output> {
        self.stages.push(stage.into_spec());
        WorkflowBuilder {
            name: self.name,
            stages: self.stages,
            _tail: PhantomData,
        }
    }
}

impl<T> WorkflowBuilder<T> {
    /// Appends a stage that receives the output of the previous one.
    ///
    /// Pass a tuple of steps (or [`Chain`]s) to run them in parallel.
    #[must_use]
    pub fn then<S: Stage<T>>(mut self, stage: S) -> WorkflowBuilder<S::Output> {
        self.stages.push(stage.into_spec());
        WorkflowBuilder {
            name: self.name,
            stages: self.stages,
            _tail: PhantomData,
        }
    }

    /// Validates the graph and builds the workflow.
    pub fn build(self) -> Result<Workflow, WorkflowError> {
        let name = WorkflowName::new(self.name.clone()).map_err(|source| {
            WorkflowError::InvalidWorkflowName {
                name: self.name.clone(),
                source,
            }
        })?;
        let mut drafts = Vec::new();
        attach(
            StageSpec(StageKind::Sequence(self.stages)),
            Vec::new(),
            &mut drafts,
        );
        if drafts.is_empty() {
            return Err(WorkflowError::Empty(self.name));
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
            names.push(step);
        }
        let mut steps: Vec<StepNode> = drafts
            .iter()
            .zip(&names)
            .map(|(draft, name)| StepNode {
                name: name.clone(),
                parents: draft.parents.iter().map(|&p| names[p].clone()).collect(),
                children: Vec::new(),
                spec: draft.spec.clone(),
            })
            .collect();
        for (index, draft) in drafts.iter().enumerate() {
            if draft.parents.len() > 1 {
                return Err(WorkflowError::JoinNotSupported {
                    step: names[index].to_string(),
                    parents: steps[index]
                        .parents
                        .iter()
                        .map(ToString::to_string)
                        .collect(),
                });
            }
            for &parent in &draft.parents {
                steps[parent].children.push(names[index].clone());
            }
        }
        Ok(Workflow {
            inner: Arc::new(WorkflowInner { name, steps }),
        })
    }
}

struct Draft {
    spec: StepSpec,
    parents: Vec<usize>,
}

/// Adds `stage` to `drafts` below `parents` and returns the indices of its last steps.
///
/// Drafts are pushed parents first, so their order is a topological order of the graph.
fn attach(stage: StageSpec, parents: Vec<usize>, drafts: &mut Vec<Draft>) -> Vec<usize> {
    match stage.0 {
        StageKind::Step(spec) => {
            drafts.push(Draft { spec, parents });
            vec![drafts.len() - 1]
        }
        StageKind::Parallel(stages) => stages
            .into_iter()
            .flat_map(|stage| attach(stage, parents.clone(), drafts))
            .collect(),
        StageKind::Sequence(stages) => stages
            .into_iter()
            .fold(parents, |tail, stage| attach(stage, tail, drafts)),
    }
}

/// One step of a built workflow, with its place in the graph.
#[derive(Clone)]
pub struct StepNode {
    name: StepName,
    parents: Vec<StepName>,
    children: Vec<StepName>,
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

    /// The step's retry policy.
    pub fn retry(&self) -> &RetryPolicy {
        &self.spec.retry
    }

    /// How long one attempt may run.
    pub fn timeout(&self) -> Duration {
        self.spec.timeout
    }

    pub(crate) fn handler(&self) -> &dyn ErasedStep {
        &*self.spec.handler
    }
}

struct WorkflowInner {
    name: WorkflowName,
    steps: Vec<StepNode>,
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
        WorkflowBuilder {
            name: name.into(),
            stages: Vec::new(),
            _tail: PhantomData,
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
}

/// A parent-to-child edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edge {
    /// The parent.
    pub from: StepName,
    /// The child.
    pub to: StepName,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::step::{StepContext, StepError};

    async fn unit(_: (), _: StepContext) -> Result<u32, StepError> {
        Ok(1)
    }
    async fn inc(x: u32, _: StepContext) -> Result<u32, StepError> {
        Ok(x + 1)
    }
    async fn text(x: u32, _: StepContext) -> Result<String, StepError> {
        Ok(x.to_string())
    }

    #[test]
    fn chain_then_parallel_builds_a_tree_in_topological_order() {
        let flow = Workflow::builder("simple")
            .start(Step::new("get_data", unit))
            .then(Step::new("process_data", inc))
            .then((Step::new("load_a", text), Step::new("load_b", inc)))
            .build()
            .unwrap();
        let names: Vec<_> = flow.steps().iter().map(|s| s.name().as_str()).collect();
        assert_eq!(names, ["get_data", "process_data", "load_a", "load_b"]);
        let process = flow.step("process_data").unwrap();
        assert_eq!(process.parents(), [StepName::new("get_data").unwrap()]);
        assert_eq!(process.children().len(), 2);
        assert!(flow.step("get_data").unwrap().parents().is_empty());
        assert!(flow.step("load_b").unwrap().children().is_empty());
    }

    #[test]
    fn nested_chains_make_branches_of_different_lengths() {
        let flow = Workflow::builder("tree")
            .start(Step::new("a", unit))
            .then((
                Chain::new(Step::new("b", inc)).then(Step::new("c", text)),
                Step::new("d", inc),
            ))
            .build()
            .unwrap();
        assert_eq!(flow.step("c").unwrap().parents()[0].as_str(), "b");
        assert_eq!(flow.step("d").unwrap().parents()[0].as_str(), "a");
        assert_eq!(flow.step("a").unwrap().children().len(), 2);
    }

    #[test]
    fn parallel_first_steps_all_start_from_the_trigger() {
        let flow = Workflow::builder("two_roots")
            .start((Step::new("x", unit), Step::new("y", unit)))
            .build()
            .unwrap();
        assert!(flow.steps().iter().all(|s| s.parents().is_empty()));
    }

    #[test]
    fn empty_workflow_is_refused() {
        let err = Workflow::builder("nothing").build().unwrap_err();
        assert_eq!(err, WorkflowError::Empty("nothing".into()));
    }

    #[test]
    fn duplicate_step_names_are_refused() {
        let err = Workflow::builder("dup")
            .start(Step::new("a", unit))
            .then((Step::new("b", inc), Step::new("b", inc)))
            .build()
            .unwrap_err();
        assert_eq!(err, WorkflowError::DuplicateStep("b".into()));
    }

    #[test]
    fn invalid_names_are_refused_with_the_reason() {
        let err = Workflow::builder("bad.name")
            .start(Step::new("a", unit))
            .build()
            .unwrap_err();
        assert!(matches!(err, WorkflowError::InvalidWorkflowName { .. }));
        let err = Workflow::builder("ok")
            .start(Step::new("has space", unit))
            .build()
            .unwrap_err();
        assert!(matches!(
            err,
            WorkflowError::InvalidStepName { ref name, source: NameError::InvalidCharacter(_) } if name == "has space"
        ));
        let err = Workflow::builder("ok")
            .start(Step::new("parked", unit))
            .build()
            .unwrap_err();
        assert!(matches!(
            err,
            WorkflowError::InvalidStepName {
                source: NameError::Reserved(_),
                ..
            }
        ));
    }

    #[test]
    fn joins_are_refused_until_supported() {
        async fn both(_: (u32, u32), _: StepContext) -> Result<(), StepError> {
            Ok(())
        }
        let err = Workflow::builder("diamond")
            .start(Step::new("a", unit))
            .then((Step::new("b", inc), Step::new("c", inc)))
            .then(Step::new("d", both))
            .build()
            .unwrap_err();
        assert!(matches!(err, WorkflowError::JoinNotSupported { ref step, .. } if step == "d"));
    }

    #[test]
    fn definition_serialises_steps_edges_and_retry_policies() {
        let flow = Workflow::builder("simple")
            .start(Step::new("a", unit).retry(RetryPolicy::none()))
            .then(Step::new("b", inc).timeout(Duration::from_secs(5)))
            .build()
            .unwrap();
        let json = serde_json::to_value(flow.definition()).unwrap();
        assert_eq!(json["name"], "simple");
        assert_eq!(
            json["steps"][0]["retry"],
            serde_json::json!({"kind": "none"})
        );
        assert_eq!(json["steps"][1]["parents"], serde_json::json!(["a"]));
        assert_eq!(json["steps"][1]["input_type"], "u32");
        assert_eq!(json["steps"][1]["timeout_ms"], 5000);
        assert_eq!(json["edges"], serde_json::json!([{"from": "a", "to": "b"}]));
        let back: WorkflowDefinition = serde_json::from_value(json).unwrap();
        assert_eq!(back, flow.definition());
    }
}
