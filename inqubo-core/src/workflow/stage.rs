//! Stages: what can follow what in a workflow. A step, steps in parallel (a tuple), or a
//! [`Chain`] of stages, each with the type it hands on; the builder attaches their untyped
//! shapes ([`StageSpec`]) to make the graph.

use std::{fmt, marker::PhantomData};

use crate::step::{Step, StepSpec};

/// The untyped shape of a stage (a step, steps in parallel, or a chain), built by [`Stage`].
///
/// You do not build this yourself; it exists so that steps, tuples and [`Chain`]s can be passed
/// to [`WorkflowBuilder::then`](super::WorkflowBuilder::then).
pub struct StageSpec(pub(super) StageKind);

pub(super) enum StageKind {
    Step(StepSpec),
    /// A step run once per element of its parent's list; `true`: failed elements are
    /// collected as errors instead of failing the run.
    Map(StepSpec, bool),
    Parallel(Vec<StageSpec>),
    Sequence(Vec<StageSpec>),
}

impl fmt::Debug for StageSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            StageKind::Step(spec) => write!(f, "{}", spec.name),
            StageKind::Map(spec, _) => write!(f, "map({})", spec.name),
            StageKind::Parallel(stages) => f.debug_tuple("Parallel").field(stages).finish(),
            StageKind::Sequence(stages) => f.debug_tuple("Sequence").field(stages).finish(),
        }
    }
}

/// Something that can follow a step producing `In`: a [`Step`] taking `In`, a tuple of stages
/// (run in parallel), or a [`Chain`].
///
/// A step whose input is not its parent's output does not compile:
///
/// ```compile_fail,E0277
/// use inqubo_core::{Step, StepContext, StepError, Workflow};
///
/// async fn fetch(_: (), _: StepContext) -> Result<Vec<u32>, StepError> { Ok(vec![1, 2, 3]) }
/// async fn total(v: Vec<u32>, _: StepContext) -> Result<u32, StepError> { Ok(v.iter().sum()) }
/// async fn count(v: Vec<u32>, _: StepContext) -> Result<usize, StepError> { Ok(v.len()) }
///
/// // error: `Step<Vec<u32>, usize>` cannot follow a stage whose output is `u32`
/// let flow = Workflow::builder("stats")
///     .start(Step::new("fetch", fetch))
///     .then(Step::new("total", total))
///     .then(Step::new("count", count))
///     .build();
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot follow a stage whose output is `{In}`",
    label = "expected a step whose input is `{In}`",
    note = "a step's input must be its parent's output, here `{In}`",
    note = "a step after steps in parallel joins them: its input is the tuple of their outputs, \
            in order"
)]
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
