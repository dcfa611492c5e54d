//! One exchange: K pipelined requests, the fragments they are written in, how the
//! exchange ends, and the answers read back so far.

use crate::behaviour::Behaviour;
use crate::codec::Request;
use crate::options::{Opts, Proto};
use crate::rng::Rng;

/// Past this many bytes, an exchange is not written a few bytes at a time (each write
/// is a segment: tens of thousands of them would only burn the machine's CPU).
const TINY_WRITES_UP_TO: usize = 4096;

pub(crate) struct Exchange {
    pub(crate) behaviour: Behaviour,
    /// Every request, back to back.
    pub(crate) wire: Vec<u8>,
    pub(crate) requests: Vec<Request>,
    /// Where each write ends, increasing; the last is the end of what is sent: all of
    /// `wire`, or for a reset, possibly only part of it.
    pub(crate) cuts: Vec<usize>,
    /// Writes done.
    pub(crate) writes: usize,
    /// Answers read and found right, in order.
    pub(crate) answered: usize,
    /// Their bytes.
    pub(crate) answer_bytes: u64,
    /// Bytes read and not yet framed.
    rbuf: Vec<u8>,
}

impl Exchange {
    /// Draws the next exchange of a connection; `uid` numbers its requests.
    pub(crate) fn plan(opts: &Opts, rng: &mut Rng, uid: &mut u64) -> Exchange {
        let behaviour = Behaviour::pick(&opts.behaviours, rng);
        let k = rng.range(1, opts.max_pipeline.max(1));
        let mut wire = Vec::new();
        let requests: Vec<Request> = (0..k)
            .map(|_| {
                *uid += 1;
                opts.protocol.encode(*uid, rng, opts.max_payload, &mut wire)
            })
            .collect();
        let ends: Vec<usize> = requests.iter().map(|r| r.bytes.end).collect();
        let mut cuts = fragments(wire.len(), &ends, rng);
        if behaviour == Behaviour::Reset {
            // Stop anywhere, mid-request included (0: connect, send nothing, reset).
            let stop = rng.range(0, wire.len());
            cuts.retain(|&c| c < stop);
            if stop > 0 {
                cuts.push(stop);
            }
        }
        Exchange {
            behaviour,
            wire,
            requests,
            cuts,
            writes: 0,
            answered: 0,
            answer_bytes: 0,
            rbuf: Vec::new(),
        }
    }

    /// The bytes of the next write, if any is left.
    pub(crate) fn next_write(&self) -> Option<&[u8]> {
        let end = *self.cuts.get(self.writes)?;
        let start = self.writes.checked_sub(1).map_or(0, |i| self.cuts[i]);
        Some(&self.wire[start..end])
    }

    /// Requests written whole.
    pub(crate) fn requests_sent(&self) -> usize {
        let written = self.writes.checked_sub(1).map_or(0, |i| self.cuts[i]);
        self.requests
            .iter()
            .take_while(|r| r.bytes.end <= written)
            .count()
    }

    /// Whether every request has its answer.
    pub(crate) fn complete(&self) -> bool {
        self.answered == self.requests.len()
    }

    /// Takes in bytes read and frames the answers they complete; `Err` when they are
    /// not the next answer (wrong bytes, wrong order, bytes past the last answer).
    pub(crate) fn take(&mut self, proto: Proto, bytes: &[u8]) -> Result<(), String> {
        self.rbuf.extend_from_slice(bytes);
        let mut pos = 0;
        let result = loop {
            let buf = &self.rbuf[pos..];
            if buf.is_empty() {
                break Ok(());
            }
            let Some(req) = self.requests.get(self.answered) else {
                break Err(format!(
                    "{} bytes past the last answer: {:?}",
                    buf.len(),
                    String::from_utf8_lossy(&buf[..buf.len().min(80)])
                ));
            };
            match proto.answer(buf, req, &self.wire) {
                Ok(Some(n)) => {
                    pos += n;
                    self.answered += 1;
                    self.answer_bytes += n as u64;
                }
                Ok(None) => break Ok(()),
                Err(e) => {
                    break Err(format!(
                        "answer {} of {}: {e}",
                        self.answered + 1,
                        self.requests.len()
                    ));
                }
            }
        };
        self.rbuf.drain(..pos);
        result
    }

    /// Bytes of an answer begun and not finished.
    pub(crate) fn partial(&self) -> usize {
        self.rbuf.len()
    }
}

/// Where the writes of `len` bytes end (`ends`: where each request ends): all at once,
/// one write per request, a few bytes at a time, at random points, or split right
/// around the requests' boundaries.
fn fragments(len: usize, ends: &[usize], rng: &mut Rng) -> Vec<usize> {
    let mut cuts = match rng.range(0, 4) {
        0 => vec![len],
        1 => ends.to_vec(),
        2 if len <= TINY_WRITES_UP_TO => {
            let mut cuts = Vec::new();
            let mut at = 0;
            while at < len {
                at = (at + rng.range(1, 8)).min(len);
                cuts.push(at);
            }
            cuts
        }
        3 => ends
            .iter()
            .flat_map(|&e| [e.saturating_sub(1), e, e + 1])
            .collect(),
        _ => (0..rng.range(1, 8)).map(|_| rng.range(1, len)).collect(),
    };
    cuts.push(len);
    cuts.retain(|&c| c > 0 && c <= len);
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_cover_everything_in_order() {
        let mut rng = Rng::new(3, 0);
        for len in [1, 2, 10, 5000] {
            let ends = [len / 3, len / 2, len];
            for _ in 0..200 {
                let cuts = fragments(len, &ends, &mut rng);
                assert_eq!(cuts.last(), Some(&len));
                assert!(cuts.windows(2).all(|w| w[0] < w[1]), "{cuts:?}");
                assert!(cuts[0] > 0);
            }
        }
    }
}
