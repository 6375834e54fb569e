//! Fuzzes the native protocol's request decoder: any bytes must give a
//! request or an error, never a panic, and a decoded request must survive a
//! re-encode unchanged.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sluice_protocol::native;

fuzz_target!(|data: &[u8]| {
    let _ = native::frame_len(data, native::FRAME_BYTES_MAX_DEFAULT);
    let Ok((correlation_id, request)) = native::decode_request(Bytes::copy_from_slice(data))
    else {
        return;
    };
    let frame = Bytes::from(native::encode_request(correlation_id, &request).concat());
    let again = native::decode_request(frame).expect("a re-encoded request decodes");
    assert_eq!(again, (correlation_id, request));
});
