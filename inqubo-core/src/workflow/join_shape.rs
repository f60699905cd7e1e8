//! The input shape of a join step, and how its input is assembled from its parents' outputs.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::name::StepName;

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

#[cfg(test)]
mod tests {
    use super::*;

    fn name(name: &str) -> StepName {
        StepName::new(name).unwrap()
    }

    #[test]
    fn assemble_writes_nested_tuples_as_nested_arrays_in_order() {
        let shape = JoinShape::Tuple(vec![
            JoinShape::Step(name("b")),
            JoinShape::Tuple(vec![JoinShape::Step(name("c")), JoinShape::Step(name("e"))]),
        ]);
        let outputs = HashMap::from([
            (name("b"), b"1".to_vec()),
            (name("c"), b"2".to_vec()),
            (name("e"), b"\"x\"".to_vec()),
        ]);
        assert_eq!(shape.assemble(&outputs).unwrap(), br#"[1,[2,"x"]]"#);
    }

    #[test]
    fn assemble_needs_every_parent_output() {
        let shape = JoinShape::Tuple(vec![JoinShape::Step(name("b")), JoinShape::Step(name("c"))]);
        let outputs = HashMap::from([(name("b"), b"1".to_vec())]);
        assert_eq!(shape.assemble(&outputs), None);
    }
}
