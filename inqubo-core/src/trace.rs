//! W3C trace context: the `traceparent` header that makes one run one trace across runners.
//!
//! A trigger starts a trace (unless its publisher sent a `traceparent` already); every message
//! a step attempt publishes carries a `traceparent` with the same trace id and a span id of
//! its own, so a tracing backend can stitch the run's steps together whichever runner ran them.
//! Format: `00-<32 hex trace id>-<16 hex span id>-01` (www.w3.org/TR/trace-context).

/// A new trace: a random trace id and span id, sampled.
pub fn new_traceparent() -> String {
    format!(
        "00-{:032x}-{:016x}-01",
        rand::random::<u128>().max(1),
        rand::random::<u64>().max(1)
    )
}

/// The trace id of a well-formed `traceparent`.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    let valid = hex(version, 2)
        && hex(trace, 32)
        && hex(span, 16)
        && hex(flags, 2)
        && parts.next().is_none()
        && trace.bytes().any(|b| b != b'0');
    valid.then_some(trace)
}

/// A `traceparent` for a new span in the trace of `parent`, or a new trace if `parent` is
/// missing or malformed.
pub fn child_traceparent(parent: Option<&str>) -> String {
    match parent.and_then(trace_id) {
        Some(trace) => format!("00-{trace}-{:016x}-01", rand::random::<u64>().max(1)),
        None => new_traceparent(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_keep_the_trace_and_get_a_new_span() {
        let root = new_traceparent();
        let trace = trace_id(&root).unwrap().to_owned();
        let child = child_traceparent(Some(&root));
        assert_eq!(trace_id(&child), Some(trace.as_str()));
        assert_ne!(child, root);
    }

    #[test]
    fn malformed_parents_start_a_new_trace() {
        for bad in [
            "",
            "garbage",
            "00-0000-1111-01",
            "00-00000000000000000000000000000000-0000000000000001-01",
        ] {
            assert_eq!(trace_id(bad), None, "{bad}");
            assert!(trace_id(&child_traceparent(Some(bad))).is_some());
        }
    }
}
