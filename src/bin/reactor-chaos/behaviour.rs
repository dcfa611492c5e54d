//! How a peer ends an exchange: the scenarios. A new kind of bad peer (a slow network,
//! a peer that vanishes) is a new variant here and a new arm in `peer.rs`.

use clap::ValueEnum;
use serde::Serialize;

use crate::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Behaviour {
    /// `shutdown(Write)` after the last request, then read to EOF: every answer must
    /// come, in order, then EOF.
    HalfClose,
    /// Read every answer, then close.
    Graceful,
    /// Read every answer, then run the next exchange on the same connection.
    KeepAlive,
    /// Read every answer in small pieces (1 to 256 bytes) with pauses (up to 2 ms),
    /// then close: a slow reader, which the server's backpressure must hold, not drop.
    SlowRead,
    /// Close without reading the answers (nothing to check).
    Abort,
    /// SO_LINGER 0 and close, after part of the requests (possibly mid-request): the
    /// server only has to survive it.
    Reset,
}

impl Behaviour {
    pub(crate) const ALL: [Behaviour; 6] = [
        Behaviour::HalfClose,
        Behaviour::Graceful,
        Behaviour::KeepAlive,
        Behaviour::SlowRead,
        Behaviour::Abort,
        Behaviour::Reset,
    ];

    /// Whether the answers of the exchange are read and checked.
    pub(crate) fn checked(self) -> bool {
        matches!(
            self,
            Behaviour::HalfClose | Behaviour::Graceful | Behaviour::KeepAlive | Behaviour::SlowRead
        )
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Behaviour::HalfClose => "half-close",
            Behaviour::Graceful => "graceful",
            Behaviour::KeepAlive => "keep-alive",
            Behaviour::SlowRead => "slow-read",
            Behaviour::Abort => "abort",
            Behaviour::Reset => "reset",
        }
    }

    /// How often each is picked, relative to the others: mostly checked exchanges.
    fn weight(self) -> usize {
        match self {
            Behaviour::HalfClose | Behaviour::KeepAlive => 3,
            Behaviour::Graceful => 2,
            Behaviour::Abort | Behaviour::Reset | Behaviour::SlowRead => 1,
        }
    }

    /// One of `allowed` (not empty) at random, by weight.
    pub(crate) fn pick(allowed: &[Behaviour], rng: &mut Rng) -> Behaviour {
        let total: usize = allowed.iter().map(|b| b.weight()).sum();
        let mut n = rng.range(1, total);
        for &b in allowed {
            if n <= b.weight() {
                return b;
            }
            n -= b.weight();
        }
        allowed[allowed.len() - 1]
    }
}
