//! The AMQP side of the message path: headers of every AMQP type, width and nesting, as a
//! delivery may carry them. Reading them never panics and reads only what Inqubo wrote, and a
//! message built from them (a parked copy, a retry) carries at most 64 KiB of them.

use inqubo_amqp::wire::{self, MAX_INHERITED_HEADERS, Wire};
use inqubo_core::{
    RunId, WorkflowName,
    protocol::{self, Names, header},
};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use proptest::prelude::*;

fn leaf() -> impl Strategy<Value = AMQPValue> {
    prop_oneof![
        any::<bool>().prop_map(AMQPValue::Boolean),
        any::<i8>().prop_map(AMQPValue::ShortShortInt),
        any::<u8>().prop_map(AMQPValue::ShortShortUInt),
        any::<i16>().prop_map(AMQPValue::ShortInt),
        any::<u16>().prop_map(AMQPValue::ShortUInt),
        any::<i32>().prop_map(AMQPValue::LongInt),
        any::<u32>().prop_map(AMQPValue::LongUInt),
        any::<i64>().prop_map(AMQPValue::LongLongInt),
        any::<f32>().prop_map(AMQPValue::Float),
        any::<f64>().prop_map(AMQPValue::Double),
        any::<u64>().prop_map(AMQPValue::Timestamp),
        Just(AMQPValue::Void),
        proptest::collection::vec(any::<u8>(), 0..300)
            .prop_map(|bytes| AMQPValue::LongString(LongString::from(bytes))),
        "\\PC{0,40}".prop_map(|s| AMQPValue::ShortString(ShortString::from(s))),
        (1_usize..140_000).prop_map(|n| AMQPValue::LongString(LongString::from("x".repeat(n)))),
    ]
}

fn value() -> impl Strategy<Value = AMQPValue> {
    leaf().prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6)
                .prop_map(|items| AMQPValue::FieldArray(FieldArray::from(items))),
            proptest::collection::vec(("[a-z-]{1,12}", inner), 0..6).prop_map(|pairs| {
                let mut table = FieldTable::default();
                for (name, value) in pairs {
                    table.insert(name.into(), value);
                }
                AMQPValue::FieldTable(table)
            }),
        ]
    })
}

fn table() -> impl Strategy<Value = FieldTable> {
    let names = prop_oneof![
        Just(header::RUN_ID.to_owned()),
        Just(header::RETRY_ATTEMPT.to_owned()),
        Just(header::RUN_GENERATION.to_owned()),
        Just(header::REDELIVERY_COUNT.to_owned()),
        Just(header::X_DELIVERY_COUNT.to_owned()),
        Just(header::TRACEPARENT.to_owned()),
        "[a-z-]{1,20}",
    ];
    proptest::collection::vec((names, value()), 0..10).prop_map(|pairs| {
        let mut table = FieldTable::default();
        for (name, value) in pairs {
            table.insert(name.into(), value);
        }
        table
    })
}

/// The bytes of the inherited headers of `table`, counted the way the wire module budgets them
/// (an upper bound of the encoded size).
fn size(table: &FieldTable) -> usize {
    fn value(v: &AMQPValue) -> usize {
        1 + match v {
            AMQPValue::LongString(s) => 4 + s.as_bytes().len(),
            AMQPValue::ShortString(s) => 1 + s.as_str().len(),
            AMQPValue::ByteArray(b) => 4 + b.as_slice().len(),
            AMQPValue::FieldArray(a) => 4 + a.as_slice().iter().map(value).sum::<usize>(),
            AMQPValue::FieldTable(t) => {
                4 + t
                    .inner()
                    .iter()
                    .map(|(k, v)| k.as_str().len() + 1 + value(v))
                    .sum::<usize>()
            }
            _ => 8,
        }
    }
    table
        .inner()
        .iter()
        .filter(|(name, _)| name.as_str() != header::DROPPED_HEADERS)
        .map(|(name, v)| name.as_str().len() + 1 + value(v))
        .sum()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn any_headers_are_read_without_panic_and_inherited_within_budget(received in table()) {
        let read = wire::headers(Some(&received));
        // Only what Inqubo writes is read: text, integers, booleans.
        for (_, value) in read.iter() {
            prop_assert!(matches!(
                value,
                protocol::HeaderValue::Text(_) | protocol::HeaderValue::Int(_) | protocol::HeaderValue::Bool(_)
            ));
        }
        let _ = read.int(header::RETRY_ATTEMPT);
        let _ = read.text(header::RUN_ID);

        let wf = WorkflowName::new("wf").unwrap();
        let run = RunId::new("r").unwrap();
        let mut message = protocol::trigger(&wf, &run, b"{}".to_vec());
        message.inherit_headers = true;
        let wire = Wire::new(&Names::default(), message, Some(&received));
        let sent = wire.properties.headers().clone().unwrap_or_default();
        prop_assert!(!sent.inner().contains_key(header::X_DELIVERY_COUNT));
        // Inherited plus the trigger's own few headers.
        prop_assert!(size(&sent) <= MAX_INHERITED_HEADERS + 1024, "{}", size(&sent));
    }
}
