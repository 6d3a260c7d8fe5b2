//! The wire decoder on arbitrary bytes: `decode` of a request envelope, and `read_frame` (length
//! prefix, limit, envelope) over the same bytes. Neither may panic, loop or over-allocate.
#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use vigil_proto::{read_frame, Request, MAX_FRAME_BYTES};

fuzz_target!(|data: &[u8]| {
    let _ = vigil_proto::decode::<Request>(data);

    // NB: a `&[u8]` reader never returns `Pending`, so one poll with a no-op waker finishes the
    // future; no runtime is needed.
    let mut reader = data;
    let frame = pin!(read_frame::<_, Request>(&mut reader, MAX_FRAME_BYTES));
    let mut cx = Context::from_waker(Waker::noop());
    assert!(
        matches!(frame.poll(&mut cx), Poll::Ready(_)),
        "read_frame on an in-memory reader must finish in one poll"
    );
});
