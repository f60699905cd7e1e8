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
            &Tail::Start,
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
            .map(|(draft, name)| {
                let parents: Vec<StepName> = draft
                    .input
                    .leaves()
                    .into_iter()
                    .map(|p| names[p].clone())
                    .collect();
                let join = match &draft.input {
                    Tail::Many(_) => Some(draft.input.shape(&names)),
                    Tail::Start | Tail::One(_) => None,
                };
                StepNode {
                    name: name.clone(),
                    parents,
                    children: Vec::new(),
                    join,
                    spec: draft.spec.clone(),
                }
            })
            .collect();
        for (index, draft) in drafts.iter().enumerate() {
            for parent in draft.input.leaves() {
                steps[parent].children.push(names[index].clone());
            }
        }
        Ok(Workflow {
            inner: Arc::new(WorkflowInner {
                chain: is_chain(&steps),
                name,
                steps,
            }),
        })
    }
}

struct Draft {
    spec: StepSpec,
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

/// How a join step's input is assembled from its parents' outputs: the shape of its input
/// tuple. `(b, (c, d))` is `Tuple[Step(b), Tuple[Step(c), Step(d)]]`, encoded as the JSON
/// array `[b_output, [c_output, d_output]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinShape {
    /// One parent's output.
    Step(StepName),
    /// A tuple (JSON array) of shapes.
    Tuple(Vec<JoinShape>),
}

impl JoinShape {
    /// Builds the joined JSON input from each parent's output (raw JSON), or `None` if an
    /// output is missing.
    pub fn assemble(&self, outputs: &HashMap<StepName, Vec<u8>>) -> Option<Vec<u8>> {
        let mut json = Vec::new();
        self.write(outputs, &mut json)?;
        Some(json)
    }

    fn write(&self, outputs: &HashMap<StepName, Vec<u8>>, json: &mut Vec<u8>) -> Option<()> {
        match self {
            JoinShape::Step(step) => json.extend_from_slice(outputs.get(step)?),
            JoinShape::Tuple(parts) => {
                json.push(b'[');
                for (i, part) in parts.iter().enumerate() {
                    if i > 0 {
                        json.push(b',');
                    }
                    part.write(outputs, json)?;
                }
                json.push(b']');
            }
        }
        Some(())
    }
}

/// One step of a built workflow, with its place in the graph.
#[derive(Clone)]
pub struct StepNode {
    name: StepName,
    parents: Vec<StepName>,
    children: Vec<StepName>,
    join: Option<JoinShape>,
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

    /// Whether this step waits for several parents.
    pub fn is_join(&self) -> bool {
        self.join.is_some()
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
    /// Computed once: runtimes ask for every step they run.
    chain: bool,
}

/// One first step, no fan-out, no join.
fn is_chain(steps: &[StepNode]) -> bool {
    let roots = steps.iter().filter(|s| s.parents.is_empty()).count();
    roots == 1 && steps.iter().all(|s| s.children.len() <= 1 && !s.is_join())
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

    /// The steps without children: a run succeeds when all of them have.
    pub fn leaves(&self) -> impl Iterator<Item = &StepNode> {
        self.steps().iter().filter(|s| s.children.is_empty())
    }

    /// Whether the workflow is a single chain (one first step, no fan-out, no join). A chain
    /// needs no join state to know when a run ends.
    pub fn is_chain(&self) -> bool {
        self.inner.chain
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
    fn a_step_after_parallel_steps_joins_them_in_tuple_order() {
        async fn both(_: (u32, String), _: StepContext) -> Result<(), StepError> {
            Ok(())
        }
        let flow = Workflow::builder("diamond")
            .start(Step::new("a", unit))
            .then((Step::new("b", inc), Step::new("c", text)))
            .then(Step::new("d", both))
            .build()
            .unwrap();
        let d = flow.step("d").unwrap();
        assert!(d.is_join());
        assert_eq!(
            d.parents(),
            [StepName::new("b").unwrap(), StepName::new("c").unwrap()]
        );
        assert_eq!(flow.step("b").unwrap().children()[0].as_str(), "d");
        let outputs = HashMap::from([
            (StepName::new("b").unwrap(), b"2".to_vec()),
            (StepName::new("c").unwrap(), b"\"1\"".to_vec()),
        ]);
        assert_eq!(d.join().unwrap().assemble(&outputs).unwrap(), br#"[2,"1"]"#);
        assert!(!flow.is_chain());
        assert_eq!(flow.leaves().count(), 1);
        let after_b: Vec<_> = flow
            .joins_after(&StepName::new("b").unwrap())
            .iter()
            .map(|s| s.name().to_string())
            .collect();
        assert_eq!(after_b, ["d"]);
    }

    #[test]
    fn nested_tuples_join_as_nested_arrays() {
        async fn nested(_: (u32, (u32, String)), _: StepContext) -> Result<u32, StepError> {
            Ok(0)
        }
        let flow = Workflow::builder("nested")
            .start(Step::new("a", unit))
            .then((
                Step::new("b", inc),
                (Step::new("c", inc), Step::new("e", text)),
            ))
            .then(Step::new("d", nested))
            .build()
            .unwrap();
        let outputs = HashMap::from([
            (StepName::new("b").unwrap(), b"1".to_vec()),
            (StepName::new("c").unwrap(), b"2".to_vec()),
            (StepName::new("e").unwrap(), b"\"x\"".to_vec()),
        ]);
        let shape = flow.step("d").unwrap().join().unwrap();
        assert_eq!(shape.assemble(&outputs).unwrap(), br#"[1,[2,"x"]]"#);
        let mut missing = outputs.clone();
        missing.remove(&StepName::new("e").unwrap());
        assert_eq!(shape.assemble(&missing), None);
    }

    #[test]
    fn chains_are_recognised() {
        let chain = Workflow::builder("c")
            .start(Step::new("a", unit))
            .then(Step::new("b", inc))
            .build()
            .unwrap();
        assert!(chain.is_chain());
        let fan = Workflow::builder("f")
            .start(Step::new("a", unit))
            .then((Step::new("b", inc), Step::new("c", inc)))
            .build()
            .unwrap();
        assert!(!fan.is_chain());
        assert_eq!(fan.leaves().count(), 2);
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
