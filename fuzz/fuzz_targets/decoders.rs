//! The versioned binary formats read back from storage and from peers:
//! whatever the bytes, a decoder answers with a value or an error, and a
//! decoded value encodes to bytes that decode to the same bytes again
//! (compared as bytes: a float field may hold NaN, which equals nothing).
#![no_main]
use libfuzzer_sys::fuzz_target;
use threadline_protocol::codec;

macro_rules! round_trip {
    ($data:expr, $decode:path, $encode:path) => {
        if let Ok(v) = $decode($data) {
            let bytes = $encode(&v);
            let again = $decode(&bytes).expect("what was decoded encodes and decodes");
            assert_eq!($encode(&again), bytes);
        }
    };
}

fuzz_target!(|data: &[u8]| {
    round_trip!(data, codec::decode_log_record, codec::encode_log_record);
    round_trip!(data, codec::decode_snapshot, codec::encode_snapshot);
    round_trip!(data, codec::decode_timer_row, codec::encode_timer_row);
    round_trip!(data, codec::decode_outbox, codec::encode_outbox);
    round_trip!(data, codec::decode_agent_work, codec::encode_agent_work);
    round_trip!(data, codec::decode_offer_hold, codec::encode_offer_hold);
    round_trip!(data, codec::decode_dead_letter, codec::encode_dead_letter);
});
