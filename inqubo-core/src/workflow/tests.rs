//! Tests of the workflow graph and its builder.

use std::{collections::HashMap, time::Duration};

use super::*;
use crate::step::{Step, StepContext, StepError};

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
fn duplicate_step_names_are_refused() {
    let err = Workflow::builder("dup")
        .start(Step::new("a", unit))
        .then((Step::new("b", inc), Step::new("b", inc)))
        .build()
        .unwrap_err();
    assert_eq!(err, WorkflowError::DuplicateStep("b".into()));
}

#[test]
fn a_timeout_past_the_consumer_timeout_is_refused() {
    use std::time::Duration;
    let err = Workflow::builder("slow")
        .start(Step::new("a", unit).timeout(Duration::from_secs(45 * 60)))
        .build()
        .unwrap_err();
    assert_eq!(
        err,
        WorkflowError::TimeoutTooLong {
            step: "a".into(),
            timeout: Duration::from_secs(45 * 60),
            max: crate::MAX_STEP_TIMEOUT,
        }
    );
    assert!(err.to_string().contains("consumer timeout"), "{err}");
    assert!(
        Workflow::builder("slow")
            .start(Step::new("a", unit).timeout(crate::MAX_STEP_TIMEOUT))
            .build()
            .is_ok()
    );
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

#[test]
fn a_map_is_collected_by_the_step_after_it() {
    async fn list(n: u32, _: StepContext) -> Result<Vec<u32>, StepError> {
        Ok((0..n).collect())
    }
    async fn total(v: Vec<u32>, _: StepContext) -> Result<u32, StepError> {
        Ok(v.iter().sum())
    }
    let flow = Workflow::builder("m")
        .start(Step::new("list", list))
        .map(Step::new("inc", inc))
        .reduce(Step::new("total", total))
        .build()
        .unwrap();
    let map = flow.step("inc").unwrap();
    assert!(map.is_map() && !map.listens_to_parents());
    let reduce = flow.step("total").unwrap();
    assert_eq!(
        reduce.join(),
        Some(&JoinShape::Step(StepName::new("inc").unwrap()))
    );
    assert!(!reduce.listens_to_parents());
    assert!(!flow.is_chain());
    assert!(flow.step("list").unwrap().listens_to_parents());
}

#[test]
fn a_map_right_after_a_map_is_refused() {
    async fn list(n: u32, _: StepContext) -> Result<Vec<Vec<u32>>, StepError> {
        Ok(vec![vec![n]])
    }
    async fn same(v: Vec<u32>, _: StepContext) -> Result<Vec<u32>, StepError> {
        Ok(v)
    }
    let error = Workflow::builder("mm")
        .start(Step::new("list", list))
        .map(Step::new("a", same))
        .map(Step::new("b", same))
        .build()
        .unwrap_err();
    assert_eq!(
        error,
        WorkflowError::MapAfterMap {
            map: "b".into(),
            parent: "a".into()
        }
    );
}
