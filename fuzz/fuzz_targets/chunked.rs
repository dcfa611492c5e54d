//! The chunked-body parser, reached as the reactor reaches it: through `Http` (and
//! `HttpCodec`), the bytes after the plan following a chunked request head. See
//! `reactor_fuzz`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reactor_fuzz::Plan;

fuzz_target!(|data: &[u8]| {
    if let Some((plan, input)) = Plan::split(data) {
        reactor_fuzz::chunked(&plan, input);
    }
});
