//! The PROXY protocol header, as a connection from a trusted peer reaches it: the bytes
//! arrive in pieces and `reactor::proxy::parse` is asked again after each one. The
//! first byte of the input picks the accepted versions.
//!
//! Checked: no panic; the header length never exceeds the bytes given; and the answer
//! does not depend on the split: a prefix of a header is incomplete (never refused, never
//! a different header), and once complete the result is the one-read result.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reactor::proxy::{MAX_HEADER, Parsed, ProxyMode, parse};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, input)) = data.split_first() else {
        return;
    };
    let mode = match mode % 3 {
        0 => ProxyMode::V1,
        1 => ProxyMode::V2,
        _ => ProxyMode::Any,
    };
    let whole = parse(mode, input);
    if let Parsed::Done { len, .. } = whole {
        assert!(len <= input.len() && len <= MAX_HEADER + 16 + 65535);
    }
    // Every prefix: incomplete until the result settles, then the same result.
    let mut settled = None;
    for cut in 0..=input.len() {
        let p = parse(mode, &input[..cut]);
        match (&settled, &p) {
            (None, Parsed::Incomplete) => {}
            (None, _) => settled = Some((cut, p)),
            (Some((_, first)), _) => match (first, &p) {
                // Once a header is complete, more bytes after it change nothing.
                (Parsed::Done { .. }, _) | (Parsed::Refused(_), Parsed::Refused(_)) => {
                    assert_eq!(first, &p, "cut {cut}");
                }
                _ => panic!("{first:?} at a shorter prefix, then {p:?} at {cut}"),
            },
        }
    }
    match settled {
        Some((_, first)) => assert_eq!(first, whole),
        None => assert_eq!(whole, Parsed::Incomplete),
    }
});
