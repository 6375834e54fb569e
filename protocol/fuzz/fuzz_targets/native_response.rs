//! Fuzzes the native protocol's response decoder: any bytes must give a
//! response or an error, never a panic, and a decoded response must survive
//! a re-encode unchanged.
//!
//! Each input is tried twice: as a whole frame, and as a header and payload
//! behind consistent length fields, so that most inputs reach the FlatBuffers
//! verifier and the payload checks instead of stopping at the frame checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_protocol::native;

/// Frames `data` as: first byte = payload length, then header, then payload.
fn framed(data: &[u8]) -> Vec<u8> {
    let Some((&payload_len, rest)) = data.split_first() else {
        return Vec::new();
    };
    let header_len = rest.len().saturating_sub(usize::from(payload_len));
    let frame_len = (native::HEADER_LEN_BYTES + rest.len()) as u32;
    let mut frame = frame_len.to_be_bytes().to_vec();
    frame.extend_from_slice(&(header_len as u32).to_be_bytes());
    frame.extend_from_slice(rest);
    frame
}

fn check(frame: Vec<u8>) {
    let _ = native::frame_len(&frame, native::FRAME_BYTES_MAX_DEFAULT);
    let Ok(response) = native::decode_response(frame.into()) else {
        return;
    };
    let frame = native::encode_response(&response).concat().into();
    let again = native::decode_response(frame).expect("a re-encoded response decodes");
    assert_eq!(again, response);
}

fuzz_target!(|data: &[u8]| {
    check(data.to_vec());
    check(framed(data));
});
