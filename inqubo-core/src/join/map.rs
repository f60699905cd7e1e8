//! A map's results in a join book: one output per element, in the list's order.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The results of one map's elements received so far, for one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct MapResults {
    /// How many elements the map has.
    pub(super) size: u32,
    /// Each element's output, by its place in the list.
    pub(super) results: std::collections::BTreeMap<u32, Box<RawValue>>,
}

impl MapResults {
    /// The list of every element's output in order (a JSON array), once all have reported.
    pub(super) fn complete(&self) -> Option<Box<RawValue>> {
        if self.results.len() < self.size as usize {
            return None;
        }
        let mut list = String::from("[");
        for (i, output) in self.results.values().enumerate() {
            if i > 0 {
                list.push(',');
            }
            list.push_str(output.get());
        }
        list.push(']');
        RawValue::from_string(list).ok()
    }
}
