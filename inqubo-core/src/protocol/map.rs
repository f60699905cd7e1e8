//! The messages of a map: one input per element of the list a map's parent returned, and what
//! marks every message of an element (`map-index`, `map-size`).
//!
//! A map step runs once per element. Its parent's runner splits the list and sends each
//! element to the map step's queue as an input of its own; each element's attempts, events,
//! retries and join pieces carry the element's place, so that the map's collector (the step
//! after the map, or the run join) can put the results back in order, and count each element
//! once however often it is delivered.

use std::time::Duration;

use serde_json::value::RawValue;

use crate::{
    name::{RunId, StepName, WorkflowName},
    protocol::{
        Destination, Outgoing, header,
        header::Headers,
        join_piece,
        outgoing::{generation_suffix, run_headers},
    },
};

/// The most elements one map may have: a list longer than this fails its step as
/// `too_large`. Each element is a message of its own, published by one attempt with
/// confirms, and the collector keeps every result until the last one arrives.
pub const MAX_MAP_ELEMENTS: usize = 1_000_000;

/// One element of a map: its place in the list, and the list's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Element {
    /// Its place in the list, from 0.
    pub index: u32,
    /// How many elements the list has.
    pub size: u32,
}

impl Element {
    /// Adds `map-index` and `map-size` to `headers`.
    pub fn mark(self, headers: &mut Headers) {
        headers.insert(header::MAP_INDEX, self.index);
        headers.insert(header::MAP_SIZE, self.size);
    }

    /// The element `map-index` and `map-size` name, if both are there and the index is below
    /// the size.
    pub fn from_headers(index: Option<i64>, size: Option<i64>) -> Option<Self> {
        let index = u32::try_from(index?).ok()?;
        let size = u32::try_from(size?).ok()?;
        (index < size).then_some(Self { index, size })
    }

    /// How the element shows in a `message_id` and an idempotency key: `[<index>]`.
    pub fn suffix(element: Option<Self>) -> String {
        element.map_or_else(String::new, |e| format!("[{}]", e.index))
    }
}

/// Why a list could not be split into a map's elements.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SplitError {
    /// The output is not a JSON array.
    #[error("output is not a JSON array, so map `{map}` cannot take its elements: {reason}")]
    NotAList {
        /// The map step.
        map: String,
        /// What the JSON parser said.
        reason: String,
    },
    /// The list has more elements than [`MAX_MAP_ELEMENTS`].
    #[error("output has {len} elements, more than the {MAX_MAP_ELEMENTS} map `{map}` may take")]
    TooLong {
        /// The map step.
        map: String,
        /// How many elements the list has.
        len: usize,
    },
}

/// The inputs of a map: one per element of its parent's list, made a window at a time, so that
/// a driver never holds the inputs of a wide map all at once (a map of 100,000 elements keeps
/// its list and 16 bytes per element).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanOut {
    workflow: WorkflowName,
    map: StepName,
    run_id: RunId,
    generation: u32,
    trace: Option<String>,
    priority: crate::Priority,
    list: Vec<u8>,
    /// Where each element lies in `list`.
    spans: Vec<std::ops::Range<usize>>,
}

impl FanOut {
    /// The inputs of `map` for `list` (its parent's output, a JSON array), in generation
    /// `generation` of run `run_id`.
    pub fn new(
        workflow: &WorkflowName,
        map: &StepName,
        run_id: &RunId,
        generation: u32,
        list: Vec<u8>,
    ) -> Result<Self, SplitError> {
        let spans = {
            let items: Vec<&RawValue> =
                serde_json::from_slice(&list).map_err(|e| SplitError::NotAList {
                    map: map.to_string(),
                    reason: e.to_string(),
                })?;
            if items.len() > MAX_MAP_ELEMENTS {
                return Err(SplitError::TooLong {
                    map: map.to_string(),
                    len: items.len(),
                });
            }
            let base = list.as_ptr() as usize;
            items
                .iter()
                .map(|item| {
                    let start = item.get().as_ptr() as usize - base;
                    start..start + item.get().len()
                })
                .collect()
        };
        Ok(Self {
            workflow: workflow.clone(),
            map: map.clone(),
            run_id: run_id.clone(),
            generation,
            trace: None,
            priority: crate::Priority::Normal,
            list,
            spans,
        })
    }

    /// The same inputs, each with this `traceparent`.
    #[must_use]
    pub fn with_trace(mut self, traceparent: &str) -> Self {
        self.trace = Some(traceparent.to_owned());
        self
    }

    /// The same inputs, in the lane of class `priority`.
    #[must_use]
    pub fn with_priority(mut self, priority: crate::Priority) -> Self {
        self.priority = priority;
        self
    }

    /// How many elements the list has.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The inputs of the elements in `range` (of `0..len()`), in order.
    pub fn inputs(&self, range: std::ops::Range<usize>) -> Vec<Outgoing> {
        let size = u32::try_from(self.len()).unwrap_or(u32::MAX);
        let (workflow, map, run_id) = (&self.workflow, &self.map, &self.run_id);
        let suffix = generation_suffix(self.generation);
        range
            .filter_map(|index| Some((index, self.spans.get(index)?.clone())))
            .map(|(index, span)| {
                let index = u32::try_from(index).unwrap_or(u32::MAX);
                let mut headers = run_headers(run_id, self.generation);
                Element { index, size }.mark(&mut headers);
                if let Some(trace) = &self.trace {
                    headers.insert(header::TRACEPARENT, trace.as_str());
                }
                Outgoing {
                    destination: Destination::Step {
                        workflow: workflow.clone(),
                        step: map.clone(),
                        delay: Duration::ZERO,
                    },
                    body: self.list.get(span).unwrap_or_default().to_vec(),
                    headers,
                    inherit_headers: false,
                    message_id: format!("{run_id}:{workflow}:{map}[{index}]:element{suffix}"),
                    mandatory: true,
                }
                .with_priority(self.priority)
            })
            .collect()
    }
}

/// Every input of `map` for `list` at once (see [`FanOut`], which makes them a window at a
/// time).
pub fn map_elements(
    workflow: &WorkflowName,
    map: &StepName,
    run_id: &RunId,
    generation: u32,
    list: &[u8],
) -> Result<Vec<Outgoing>, SplitError> {
    let fan_out = FanOut::new(workflow, map, run_id, generation, list.to_vec())?;
    Ok(fan_out.inputs(0..fan_out.len()))
}

/// The result of one element of `map`, for the collector `join` (the step after the map, or
/// the run join): a join piece marked with the element, so that the collector counts each
/// element once and puts the results back in order.
pub fn element_piece(
    workflow: &WorkflowName,
    join: &str,
    run_id: &RunId,
    generation: u32,
    map: &StepName,
    element: Element,
    output: Vec<u8>,
) -> Outgoing {
    let mut piece = join_piece(workflow, join, run_id, generation, map, output, false);
    element.mark(&mut piece.headers);
    piece.message_id = format!(
        "{run_id}:{workflow}:{map}[{}]:piece:{join}{}",
        element.index,
        generation_suffix(generation)
    );
    piece
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_splits_into_one_marked_input_per_element_in_order() {
        let workflow = WorkflowName::new("files").unwrap();
        let map = StepName::new("resize").unwrap();
        let run = RunId::new("r1").unwrap();
        let inputs = map_elements(&workflow, &map, &run, 1, br#"["a", {"b": 1}, 3]"#).unwrap();
        let bodies: Vec<&[u8]> = inputs.iter().map(|m| m.body.as_slice()).collect();
        assert_eq!(bodies, [&b"\"a\""[..], br#"{"b": 1}"#, b"3"]);
        assert_eq!(inputs[1].headers.int(header::MAP_INDEX), Some(1));
        assert_eq!(inputs[1].headers.int(header::MAP_SIZE), Some(3));
        assert_eq!(inputs[2].message_id, "r1:files:resize[2]:element");
        assert!(
            map_elements(&workflow, &map, &run, 1, b"[]")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn an_output_that_is_no_list_cannot_be_split() {
        let workflow = WorkflowName::new("files").unwrap();
        let map = StepName::new("resize").unwrap();
        let run = RunId::new("r1").unwrap();
        let error = map_elements(&workflow, &map, &run, 1, br#"{"a": 1}"#).unwrap_err();
        assert!(matches!(error, SplitError::NotAList { .. }), "{error}");
    }
}
