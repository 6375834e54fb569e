//! RecordBatch v2 decoders on arbitrary bytes: `validate`, `split` and `records` must
//! return a value or an error for every input, never panic, hang or allocate beyond
//! what the input implies. Every iterator is drained so each record is decoded.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_protocol::batch;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = batch::validate(data) {
        // A batch that validates is exactly one whole batch: split must agree.
        let parts: Vec<_> = batch::split(data).collect();
        assert_eq!(parts, [Ok((0..data.len(), header))]);
    }
    for (range, header) in batch::split(data).flatten() {
        assert_eq!(range.len(), header.total_bytes());
        let _ = batch::validate(&data[range.clone()]);
        drain_records(&data[range]);
    }
    drain_records(data);
});

fn drain_records(bytes: &[u8]) {
    if let Ok(records) = batch::records(bytes) {
        for record in records {
            match record {
                Ok(record) => assert!(record.headers.len() <= bytes.len()),
                Err(_) => break,
            }
        }
    }
}
