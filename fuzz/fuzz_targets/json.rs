//! JSON decoder (inline `Json` and pooled `JsonCodec`): the bytes after the plan are a
//! client's byte stream, fed in the plan's reads under its limits. See `reactor_fuzz`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reactor_fuzz::Plan;

fuzz_target!(|data: &[u8]| {
    if let Some((plan, input)) = Plan::split(data) {
        reactor_fuzz::json(&plan, input);
    }
});
