//! Fuzzes the native protocol's response decoder: any bytes must give a
//! response or an error, never a panic, and a decoded response must survive
//! a re-encode unchanged.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sluice_protocol::native;

fuzz_target!(|data: &[u8]| {
    let Ok(response) = native::decode_response(Bytes::copy_from_slice(data)) else {
        return;
    };
    let frame = Bytes::from(native::encode_response(&response).concat());
    let again = native::decode_response(frame).expect("a re-encoded response decodes");
    assert_eq!(again, response);
});
